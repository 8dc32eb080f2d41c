"""The patch embedding as one matrix product (`PatchProjection`) against timm's convolution, in the step's dtype.

Layer: forward and backward of each form at the config's crop shapes (2 x B global, n_local x B local views), the
best of several interleaved timings (`dinotwins.timing`). Step: whole training steps of one trainer, the two forms
swapped in for each other (the same weights) one step of each per pair, which goes first alternating, so a machine
whose speed drifts slows both alike; the median and the spread of the pairs' ratios. Only under CPU bf16 autocast
do the two differ (`PatchProjection.forward`); elsewhere both rows time the convolution.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from dinotwins.benchmark.step import bench_trainer
from dinotwins.config import TrainConfig
from dinotwins.models.backbone import PatchProjection, uninitialized_like
from dinotwins.timing import best_seconds, forward_backward, interleaved_seconds


def as_convolution(projection: PatchProjection) -> nn.Conv2d:
    """A plain `nn.Conv2d` sharing `projection`'s parameters (no new random draws)."""
    conv = uninitialized_like(nn.Conv2d, projection)
    conv.weight, conv.bias = projection.weight, projection.bias
    return conv


def bench_patch_embedding(cfg: TrainConfig, pairs: int, warmup: int, repeats: int = 5) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = bench_trainer(cfg, Path(tmp) / "run", compile=False)
        owners = [m for m in trainer.objective.modules() if isinstance(getattr(m, "proj", None), PatchProjection)]
        forms = {"matmul": [m.proj for m in owners], "conv": [as_convolution(m.proj) for m in owners]}

        def use(form: str) -> None:
            for owner, module in zip(owners, forms[form]):
                owner.proj = module

        result: dict[str, float | str] = {"dtype": str(trainer.autocast_dtype or torch.float32).split(".")[-1],
                                          "patch_embeddings": len(owners)}
        aug, batch = cfg.augment, cfg.batch_size
        for name, views, size in (("global", 2, aug.global_size), ("local", aug.n_local, aug.local_size)):
            if views == 0:
                continue
            x = torch.rand(views * batch, 3, size, size, device=trainer.device)
            best = best_seconds({form: forward_backward(modules[0], x, trainer.autocast)
                                 for form, modules in forms.items()}, repeats, device=trainer.device)
            for form in forms:
                result[f"layer_{name}_{form}_ms"] = round(1000 * best[form], 2)

        images = torch.randint(0, 256, (batch, 3, cfg.model.image_size, cfg.model.image_size), dtype=torch.uint8,
                               device=trainer.device)
        step = iter(range(10**9))
        for _ in range(warmup):
            trainer.train_step(images, next(step))
        seconds = interleaved_seconds({form: lambda: trainer.train_step(images, next(step)) for form in forms},
                                      pairs, device=trainer.device, before_each=use)
        use("matmul")
    ratios = sorted(c / m for m, c in zip(seconds["matmul"], seconds["conv"]))
    result.update({f"step_{form}_s_mean": round(statistics.mean(v), 4) for form, v in seconds.items()})
    # one rounding for all three, so the median reported stays inside the range reported
    result.update({"pairs": pairs, "conv_over_matmul_median": round(statistics.median(ratios), 4),
                   "conv_over_matmul_range": [round(ratios[0], 4), round(ratios[-1], 4)]})
    return result
