"""Downloads: each tab's picture as a PNG and the numbers behind it as CSV or JSON, written to fresh files that
gradio then serves from its own cache.

Files go to a folder of their own under the system's temporary folder (gradio serves outputs from there) and are
named after what they hold; every call first deletes exports older than `MAX_AGE_S`, so a long-running app does not
fill the disk.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

MAX_AGE_S = 3600


def export_folder() -> Path:
    """A new folder for one download (under <tmp>/dinotwins-exports), after pruning old ones."""
    root = Path(tempfile.gettempdir()) / "dinotwins-exports"
    root.mkdir(exist_ok=True)
    now = time.time()
    for old in root.iterdir():
        if now - old.stat().st_mtime > MAX_AGE_S:
            for file in old.glob("*"):
                file.unlink(missing_ok=True)
            old.rmdir() if old.is_dir() else old.unlink(missing_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def write_png(folder: Path, name: str, image: Image.Image) -> str:
    path = folder / f"{name}.png"
    image.save(path, optimize=True)
    return str(path)


def write_json(folder: Path, name: str, value: Any) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(value, indent=1))
    return str(path)


def write_csv(folder: Path, name: str, headers: list[str], rows: list[list[Any]]) -> str:
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(rows)
    return str(path)
