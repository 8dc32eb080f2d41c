"""Resumable training state on disk: atomic, verified, tensors only.

Each save writes `checkpoints/step_XXXXXXXX.pt` atomically with its size and sha256 recorded in
`checkpoints/step_XXXXXXXX.pt.sha256` (`files.write_with_checksum`). Loading checks both and
uses `torch.load(weights_only=True)`, which refuses pickled objects other than tensors and plain containers, so
a checkpoint from a stranger cannot run code. `latest_good` walks back from the newest checkpoint to the
newest one that verifies, loads and holds no NaN/inf, warning about each bad one; nothing is deleted except good
checkpoints beyond the `keep` newest.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from dinotwins.errors import UserError
from dinotwins.files import checksum_problem, sidecar, write_with_checksum

CHECKPOINT_DIR = "checkpoints"  # a run folder's sub-folder of these files
_NAME = re.compile(r"step_(\d{8})\.pt$")


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    write_with_checksum(path, lambda tmp: torch.save(state, tmp))
    _prune(folder, keep)
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder`, newest step first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def load_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with safe unpickling; a payload with code is a UserError, never executed."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here is "this file is not a safe checkpoint"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"refusing to load {path}: not a plain tensor checkpoint ({reason[:160]})") from None


def latest_good(folder: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies and loads, or None if there is none; bad ones are named in warnings."""
    for path in list_checkpoints(folder):
        problem = checksum_problem(path)
        if problem is None:
            try:
                state = load_state(path, map_location)
            except UserError as exc:
                problem = str(exc)
            else:
                bad = _first_non_finite(state)
                if bad is None:
                    return path, state
                problem = f"NaN or inf values in {bad}"
        warnings.warn(f"skipping checkpoint {path}: {problem}; falling back to the previous one", stacklevel=2)
    return None


def _first_non_finite(state: Any, prefix: str = "") -> str | None:
    """Dotted key of the first floating tensor in a nested state holding NaN or inf, else None."""
    if isinstance(state, torch.Tensor):
        return (prefix or "tensor") if state.is_floating_point() and not torch.isfinite(state).all() else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def _prune(folder: Path, keep: int) -> None:
    good = [p for p in list_checkpoints(folder) if checksum_problem(p) is None]
    for old in good[keep:]:
        old.unlink(missing_ok=True)
        sidecar(old).unlink(missing_ok=True)
