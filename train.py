"""Train DINO, Barlow Twins or the DinoTwins hybrid: `python train.py --help`."""

import sys

from dinotwins.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
