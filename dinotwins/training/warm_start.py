"""`init_from`: start a run from another run's trained modules, at this run's image size.

What it is: DINOv2's short high-resolution phase at the end of pretraining, as a run of its own. The new run loads
the newest good checkpoint of the run folder named by `init_from` (student, teacher, heads, DINO's center: the
objective's whole state), resizes every absolute position embedding to its own patch grid, and trains from step 0
with a fresh optimizer and its own schedules. Its config.yaml records `init_from`; `--resume` of the new run
continues from the new run's own checkpoints and never reads the old run again.

What it is not: a resume (that is `--resume`, which keeps the optimizer and the step), nor a way to change the
architecture: width, depth, heads, patch size and method must match, or the run stops with one line saying so.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed

from dinotwins.errors import UserError
from dinotwins.training.checkpoint import CHECKPOINT_DIR, latest_good


def load_init_state(objective: torch.nn.Module, source: str | Path, device: torch.device | str = "cpu") -> None:
    """Load `source`'s newest good checkpoint into `objective` (position embeddings resized to its own). A missing
    or unfitting source is a UserError, raised before the run writes anything."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise UserError(f"--init-from {source}: not a run folder; name a run directory that has {CHECKPOINT_DIR}/")
    found = latest_good(folder / CHECKPOINT_DIR, map_location=device)
    if found is None:
        raise UserError(f"--init-from {source}: no usable checkpoint in {folder / CHECKPOINT_DIR}")
    _, state = found
    own = objective.state_dict()
    backbone = objective.student.backbone
    prefix = 0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens
    modules = {key: resized_pos_embed(value, own[key].shape, prefix)
               if key.endswith("pos_embed") and key in own else value for key, value in state["modules"].items()}
    try:
        objective.load_state_dict(modules)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"--init-from {source}: its modules do not fit this run "
                        f"({str(exc).splitlines()[0][:120]}); use the same --method and model settings, "
                        f"only the image size may differ") from None


def resized_pos_embed(pos: torch.Tensor, shape: torch.Size, prefix: int) -> torch.Tensor:
    """A (1, prefix + n*n, D) position embedding resampled (bicubic, timm's) to `shape` (1, prefix + m*m, D), the
    `prefix` tokens' (CLS, registers) kept as they are; returned unchanged unless both describe a square grid."""
    if pos.shape == shape or pos.ndim != 3 or len(shape) != 3 or pos.shape[-1] != shape[-1]:
        return pos
    old, new = math.isqrt(max(pos.shape[1] - prefix, 0)), math.isqrt(max(shape[1] - prefix, 0))
    if old * old != pos.shape[1] - prefix or new * new != shape[1] - prefix or not old or not new:
        return pos
    return resample_abs_pos_embed(pos, new_size=[new, new], old_size=[old, old], num_prefix_tokens=prefix)
