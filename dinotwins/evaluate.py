"""`python -m dinotwins.evaluate`: the evaluation command (dinotwins/evaluation/cli.py)."""

import sys

from dinotwins.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
