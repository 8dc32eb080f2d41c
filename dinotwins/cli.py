"""What every command line of the project shares: `OneLineParser`.

train.py, `python -m dinotwins.evaluate`, `python -m dinotwins.bench` and `python -m app` parse their flags with it,
so a bad flag is one line (`error: ... (see PROG --help)`, exit 2) instead of argparse's usage block, like every
other mistake a user can make (`UserError`). Torch-free: a typo is reported before anything heavy is imported.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from dinotwins.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a `UserError` naming the flag and pointing at --help; the entry point prints it."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see {self.prog} --help)")
