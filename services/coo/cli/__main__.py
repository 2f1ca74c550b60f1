"""python -m coo.cli"""

from coo.cli.main import run

if __name__ == "__main__":
    run()
