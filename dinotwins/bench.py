"""Benchmark of the real training step and of the data pipeline: `python -m dinotwins.bench --help`.

Step mode times `Trainer.train_step`, the very code train.py runs (multi-crop of a uint8 batch, student and
teacher forward over all crops, loss, backward, clipping, optimizer step, EMA and center update), on random
images after warm-up, and reports img/s, seconds per step, GFLOP per image (counted by
torch.utils.flop_counter over one step), achieved TFLOP/s, the peak TFLOP/s of a large matmul measured on the
same device and dtype, MFU = achieved / peak, and peak memory.

Data mode (`--data-pipeline`) measures augmented multi-crop images per second from Fashion-MNIST (in memory)
and from a folder of JPEGs decoded from disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dinotwins.data.augment import MultiCrop
from dinotwins.data.augment_config import AugmentConfig
from dinotwins.config import TrainConfig
from dinotwins.errors import UserError
from dinotwins.models.config import ModelConfig
from dinotwins.objectives import METHODS
from dinotwins.objectives.barlow import BarlowConfig
from dinotwins.objectives.dino import DinoConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dinotwins.bench", description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, default="dino")
    p.add_argument("--arch", default="vit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--local-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out-dim", type=int, default=4096)
    p.add_argument("--proj-dim", type=int, default=2048, help="Barlow projector width (3 layers)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile student and teacher")
    p.add_argument("--attention", choices=("auto", "fused", "explicit"), default="auto",
                   help="auto: fused SDPA on GPU, explicit softmax(q k^T) v on CPU")
    p.add_argument("--joint-backward", action="store_true",
                   help="one backward over all crops instead of one per crop resolution (same gradients)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--data-pipeline", action="store_true", help="measure the data pipeline instead")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """TFLOP/s of an n x n x n matmul in `dtype` on `device`: the roofline the step is compared with."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        method=args.method, data=f"synthetic:{max(64, args.batch_size)}", batch_size=args.batch_size,
        device=args.device, precision=args.precision, compile=args.compile, attention=args.attention,
        backward_per_resolution=not args.joint_backward,
        max_steps=10**9, epochs=10**6, save_every=10**9, log_every=10**9,
        model=ModelConfig(arch=args.arch, image_size=args.img_size, patch_size=args.patch_size, embed_dim=args.dim,
                          depth=args.depth, num_heads=args.heads),
        dino=DinoConfig(out_dim=args.out_dim),
        barlow=BarlowConfig(proj_dims=(args.proj_dim,) * 3),
        augment=AugmentConfig(global_size=args.img_size, local_size=args.local_size, n_local=args.local_crops),
    )


def bench_step(args: argparse.Namespace) -> dict[str, float | str]:
    cfg = train_config(args)
    cfg.validate()
    with tempfile.TemporaryDirectory() as tmp:
        # FLOPs are counted on an eager step (the counter cannot see inside compiled graphs).
        eager = _bench_trainer(cfg, Path(tmp) / "eager", compile=False)
        images = torch.randint(0, 256, (args.batch_size, 3, args.img_size, args.img_size), dtype=torch.uint8,
                               device=eager.device)
        eager.train_step(images, 0)
        with FlopCounterMode(display=False) as counter:
            eager.train_step(images, 1)
        flops_per_step = counter.get_total_flops()
        trainer = _bench_trainer(cfg, Path(tmp) / "timed", compile=args.compile) if args.compile else eager
        del eager
        device = trainer.device
        for step in range(args.warmup):
            trainer.train_step(images, step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        for step in range(args.steps):
            trainer.train_step(images, args.warmup + step)
        _sync(device)
        step_s = (time.perf_counter() - start) / args.steps
        dtype = trainer.autocast_dtype or torch.float32
    peak = peak_matmul_tflops(device, dtype)
    achieved = flops_per_step / step_s / 1e12
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": args.method, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "compile": bool(args.compile), "attention": args.attention,
        "backward": "joint" if args.joint_backward else "per resolution",
        "batch_size": args.batch_size,
        "img_per_s": round(args.batch_size / step_s, 2), "step_s": round(step_s, 4),
        "gflop_per_img": round(flops_per_step / args.batch_size / 1e9, 3),
        "achieved_tflops": round(achieved, 4), "peak_tflops": round(peak, 4), "mfu": round(achieved / peak, 4),
        "peak_rss_mb" if device.type == "cpu" else "peak_gpu_mem_mb": round(peak_mem, 1),
    }


def _bench_trainer(cfg: TrainConfig, out: Path, compile: bool):
    from dinotwins.training.schedules import RunLength
    from dinotwins.training.trainer import Trainer

    cfg = dataclasses.replace(cfg, compile=compile)
    trainer = Trainer(cfg, out, progress=False)
    trainer.length = RunLength(10**9, 10**9)  # keep the first-epoch phases (DINO's last-layer freeze) out of the timing
    return trainer


def bench_data(args: argparse.Namespace) -> dict[str, float | str]:
    """Augmented multi-crop images per second, Fashion-MNIST in memory and a folder of JPEGs from disk."""
    from PIL import Image

    from dinotwins.data import load_dataset
    from dinotwins.data.sampler import EpochSampler

    crop = MultiCrop(AugmentConfig(global_size=args.img_size, local_size=args.local_size, n_local=args.local_crops))
    results: dict[str, float | str] = {"batch_size": args.batch_size, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        fmnist = load_dataset("fashion-mnist", "train", image_size=args.img_size)
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        for i in range(512):
            array = fmnist.images[i, 0].numpy()
            Image.fromarray(array).convert("RGB").resize((96, 96)).save(folder / f"{i:04d}.jpg", quality=90)
        for name, spec in (("fashion_mnist", "fashion-mnist"), ("jpeg_folder", f"folder:{folder}")):
            t0 = time.perf_counter()
            dataset = load_dataset(spec, "train", image_size=args.img_size)
            load_s = time.perf_counter() - t0
            sampler = EpochSampler(len(dataset), args.batch_size, seed=0)
            batches = itertools.chain.from_iterable(sampler.batches(epoch) for epoch in itertools.count())
            generator = torch.Generator().manual_seed(0)
            n, start = 0, None
            for i, indices in enumerate(batches):
                if i == 2:
                    start = time.perf_counter()
                if i >= 2 + args.steps:
                    break
                crop(dataset.get_batch(indices), generator)
                n += args.batch_size if i >= 2 else 0
            results[f"{name}_img_per_s"] = round(n / (time.perf_counter() - start), 1)
            results[f"{name}_load_s"] = round(load_s, 3)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = bench_data(args) if args.data_pipeline else bench_step(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
