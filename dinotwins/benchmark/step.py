"""Our training step timed: `Trainer.train_step` on a run's config, beside rival steps (the official one) timed
interleaved with it, against the matmul peak measured every round, with the step's FLOPs, its matmul ceiling and,
under torchrun, the group's figures (benchmark/cli.py says what each figure means)."""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dinotwins.benchmark.ceiling import RecordProducts, matmul_ceiling, slowest_products
from dinotwins.cpu import cpu_description
from dinotwins.config import TrainConfig
from dinotwins.training import distributed
from dinotwins.timing import synchronize
from dinotwins.training.precision import matmul_seconds, pick_precision


def print_profile(fn, steps: int, rows: int, title: str) -> None:
    """`steps` calls of fn() under torch's profiler; the `rows` operators with the most self time, to stderr."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
    if not distributed.current().is_main:
        return
    print(f"profile: {title}, {steps} steps", file=sys.stderr)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40),
          file=sys.stderr)


def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10,
                       trials: int = 3) -> float:
    """TFLOP/s of an n x n x n matmul in `dtype` on `device`, the best of `trials` timings of `repeats` matmuls:
    the roofline the step is compared with. n defaults to 2048 on a CPU and 8192 on a GPU, whose peak a 2048
    product does not reach."""
    n = n or (8192 if device.type == "cuda" else 2048)
    return 2 * n**3 * repeats / matmul_seconds(dtype, n, repeats, trials, device=device, warmup=2) / 1e12


def bench_trainer(cfg: TrainConfig, out: Path, compile: bool):
    """A trainer at `cfg` writing under `out`, as the benchmarks time it: the run's length set so long that no
    first-epoch phase (DINO's last-layer freeze) falls inside the timed steps."""
    from dinotwins.schedules import RunLength
    from dinotwins.training.trainer import Trainer

    cfg = dataclasses.replace(cfg, compile=compile)
    trainer = Trainer(cfg, out, progress=False)
    trainer.length = RunLength(10**9, 10**9)
    return trainer


def roofline_dtypes(dtype: torch.dtype, device: torch.device) -> list[torch.dtype]:
    """The step's dtype, then the other dtypes the device runs natively (fp32; bf16 where `auto` would take it):
    the limit is the best of their peaks, so a step forced to an emulated bf16 is read against fp32's."""
    native = (torch.float32, *((torch.bfloat16,) if pick_precision("auto", device) == torch.bfloat16 else ()))
    return [dtype, *(other for other in native if other != dtype)]


def bench_step(cfg: TrainConfig, steps: int, warmup: int, profile_rows: int = 0,
               rivals: dict[str, Callable[[], None]] | None = None, product_rows: int = 0) -> dict[str, float | str]:
    """Our step's speed and FLOP use at `cfg`. `rivals` (name -> one step of other code, e.g. the official DINO
    step) are timed interleaved with ours, one step of each per round after their own warm-up, so a machine whose
    speed drifts (shared CPUs) slows every side alike; each gets `{name}_img_per_s` and `speedup_over_{name}`."""
    batch, size = cfg.batch_size, cfg.model.image_size
    rivals = rivals or {}
    with tempfile.TemporaryDirectory() as tmp:
        # FLOPs are counted on an eager step (the counter cannot see inside compiled graphs).
        eager = bench_trainer(cfg, Path(tmp) / "eager", compile=False)
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=eager.device)
        eager.train_step(images, 0)
        # one step counts the FLOPs and records the matrix products' shapes (for the ceiling after the timing)
        with FlopCounterMode(display=False) as counter, RecordProducts() as products:
            eager.train_step(images, 1)
        flops_per_step = counter.get_total_flops()
        trainer = bench_trainer(cfg, Path(tmp) / "timed", compile=True) if cfg.compile else eager
        del eager
        device = trainer.device
        steps_done = iter(range(10**9))
        sides = {"ours": lambda: trainer.train_step(images, next(steps_done)), **rivals}
        for run in sides.values():
            for _ in range(warmup):
                run()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dtype = trainer.autocast_dtype or torch.float32
        peak_dtypes = roofline_dtypes(dtype, device)
        seconds = {name: [] for name in sides}
        peaks = {dt: [] for dt in peak_dtypes}
        for _ in range(steps):
            for name, run in sides.items():
                synchronize(device)
                distributed.barrier()  # under torchrun each side's time starts together on every process
                start = time.perf_counter()
                run()
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
            distributed.barrier()
            for dt in peak_dtypes:  # measured every round too, so a drifting machine moves step and roofline alike
                peaks[dt].append(peak_matmul_tflops(device, dt, trials=1))
        step_s = sum(seconds["ours"]) / steps
        def best_peak_now() -> float:
            return max(peak_matmul_tflops(device, dt, trials=1) for dt in peak_dtypes)

        ceiling = matmul_ceiling(products.counts, device, step_s, best_peak_now)
        if product_rows:
            peak_now = best_peak_now()
            lines = slowest_products(products.counts, device, peak_now, product_rows)
            if trainer.dist.is_main:
                print(f"matrix products of one step ({cfg.method}), each timed alone, against a {peak_now:.3f} "
                      "TFLOP/s peak", *lines, sep="\n", file=sys.stderr)
        syncs = {name: count_device_syncs(run) for name, run in sides.items()} if device.type == "cuda" else {}
        for name, run in sides.items() if profile_rows else ():
            print_profile(run, steps, profile_rows, f"{name} ({cfg.method}, {dtype})" if name == "ours" else name)
    flop_share = ceiling["matmul_gflop_per_step"] * 1e9 / flops_per_step
    world = trainer.dist.world_size
    if world > 1:  # under torchrun: the whole group's images, FLOPs and peak per round (module docstring)
        seconds = {name: across_ranks(values, "max") for name, values in seconds.items()}
        peaks = {dt: across_ranks(values, "sum") for dt, values in peaks.items()}
        flops_per_step, batch = flops_per_step * world, batch * world
        ceiling["matmul_gflop_per_step"] *= world
        step_s = sum(seconds["ours"]) / steps
    # Each round's fraction: its step's FLOP rate over that round's peak; the median over rounds is reported.
    best_per_round = [max(round_peaks) for round_peaks in zip(*peaks.values())]
    peak = statistics.median(peaks[dtype])
    best_peak = statistics.median(best_per_round)
    mfu = statistics.median(flops_per_step / s / 1e12 / p for s, p in zip(seconds["ours"], peaks[dtype]))
    fraction = statistics.median(flops_per_step / s / 1e12 / p for s, p in zip(seconds["ours"], best_per_round))
    achieved = flops_per_step / step_s / 1e12
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "method": cfg.method, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "processes": world, "compile": cfg.compile,
        "compile_mode": cfg.compile_mode if cfg.compile else None,
        "attention": f"{cfg.attention} ({'fused' if trainer.fused_attention else 'explicit'})",
        "backward": "per resolution" if cfg.backward_per_resolution else "joint",
        "packed_crops": (f"auto ({trainer.cfg.packed_crops})" if cfg.packed_crops == "auto"
                         else trainer.cfg.packed_crops),
        "batch_size": batch,
        "img_per_s": round(batch / step_s, 2), "step_s": round(step_s, 4),
        "gflop_per_img": round(flops_per_step / batch / 1e9, 3),
        "achieved_tflops": round(achieved, 4), "peak_tflops": round(peak, 4), "mfu": round(mfu, 4),
        # the FLOP-equal limit: the step's FLOPs at the best matmul speed the device has in any dtype
        "best_peak_tflops": round(best_peak, 4), "fraction_of_limit": round(fraction, 4),
        # the step's matmuls alone at their own shapes: the fraction of the limit if all else were free
        **{key: round(value, 4) for key, value in ceiling.items()},
        "matmul_flop_share": round(flop_share, 4),
        **(cpu_description() if device.type == "cpu" else {}),
        "peak_rss_mb" if device.type == "cpu" else "peak_gpu_mem_mb": round(peak_mem, 1),
    }
    for name, count in syncs.items():  # how often one step makes the host wait for the GPU
        result["device_syncs_per_step" if name == "ours" else f"{name}_device_syncs_per_step"] = count
    for name in rivals:
        result[f"{name}_img_per_s"] = round(batch * steps / sum(seconds[name]), 2)
        result[f"speedup_over_{name}"] = round(sum(seconds[name]) / sum(seconds["ours"]), 3)
    return result


def across_ranks(values: list[float], op: str) -> list[float]:
    """Per-round values combined over the torchrun group: "max" (a round lasts as long as its slowest process) or
    "sum" (the peaks the processes measured side by side)."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=distributed.current().device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def count_device_syncs(step: Callable[[], None]) -> int:
    """How many times one call of `step` makes the host wait for the GPU (reads of device values, copies from
    pageable host memory, explicit synchronizations), counted by torch's CUDA sync debug mode."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)
