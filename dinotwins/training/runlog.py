"""metrics.jsonl: one JSON object per logged step, continued exactly across resumes.

On resume from a checkpoint at step S, rows with step > S (logged after that checkpoint, by the run that was
killed) are dropped, so the resumed run writes them again and the file has no duplicate or missing rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dinotwins.files import atomic_write


class RunLog:
    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Keep only rows with row['step'] <= step (and drop a torn last line)."""
        if not self.path.exists():
            return
        kept = [line for line in _complete_rows(self.path) if json.loads(line)["step"] <= step]
        atomic_write(self.path, "".join(kept).encode())

    def append(self, row: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in _complete_rows(self.path)] if self.path.exists() else []


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file, skipping a torn last line."""
    return RunLog(Path(path)).rows()


def _complete_rows(path: Path) -> list[str]:
    rows = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            json.loads(line)
        except ValueError:
            break
        rows.append(line)
    return rows
