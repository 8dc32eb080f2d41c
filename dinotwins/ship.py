"""`python -m dinotwins.ship`: package a finished run as a shipped demo model (dinotwins/models/ship.py)."""

import sys

from dinotwins.models.ship import main

if __name__ == "__main__":
    sys.exit(main())
