"""python -m coo.sandbox"""

from coo.sandbox.service import main

if __name__ == "__main__":
    main()
