"""`python -m dinotwins.extract`: a collection's embeddings into shards (dinotwins/collection/extract.py)."""

import sys

from dinotwins.collection.extract import main

if __name__ == "__main__":
    sys.exit(main())
