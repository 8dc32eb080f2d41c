"""`python -m dinotwins.index DIR`: a tuned FAISS index over an extraction folder (dinotwins/collection/index.py)."""

import sys

from dinotwins.collection.index import main

if __name__ == "__main__":
    sys.exit(main())
