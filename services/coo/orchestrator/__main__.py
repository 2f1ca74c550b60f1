"""python -m coo.orchestrator"""

import asyncio

from coo.orchestrator.service import serve

if __name__ == "__main__":
    asyncio.run(serve())
