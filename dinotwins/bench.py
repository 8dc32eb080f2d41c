"""`python -m dinotwins.bench`: the benchmark command (dinotwins/benchmark/cli.py)."""

import sys

from dinotwins.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
