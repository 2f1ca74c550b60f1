"""python -m coo.orchestrator"""

from coo.common.service import run_main
from coo.orchestrator.service import serve

if __name__ == "__main__":
    run_main("orchestrator", serve)
