"""Benchmark of the real training step and of the data pipeline: `python -m dinotwins.bench --help`.

Step mode times `Trainer.train_step`, the very code train.py runs (multi-crop of a uint8 batch, student and
teacher forward over all crops, loss, backward, clipping, optimizer step, EMA and center update), on random
images after warm-up, and reports img/s, seconds per step, GFLOP per image (counted by
torch.utils.flop_counter over one step), achieved TFLOP/s, the peak TFLOP/s of a large matmul on the same device
and dtype (measured after every timed step, so a shared machine's drift moves both alike), MFU = achieved / peak
(the median over steps of each step's own ratio), peak memory, and the matmul ceiling: the step's matrix products
timed alone at their own shapes (bench_ceiling.py), the fraction of the limit the step would reach if nothing else
in it took time; on a GPU also `device_syncs_per_step`, how often one step makes the host wait for the device.

What runs is a run's config, set as for train.py: `--preset` (default `bench`, the issue's CPU configuration;
dinotwins/presets/bench.yaml), `--method` and `--set key=value`, e.g. `--set precision=fp32 --set attention=fused`,
`--set backward_per_resolution=false`, `--set compile=true`, `--set device=cuda`.

Under `torchrun` (e.g. `OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m dinotwins.bench --threads 1
--set batch_size=32`: one process per core, as a DDP training would run) each process times its own step and
rank 0 prints one row for the group: the batch is the group's, a round lasts as long as its slowest process, and the
peak is the sum of the processes' peaks measured side by side; the official step then runs in DDP too.

Data mode (`--data-pipeline`) measures augmented multi-crop images per second, with the config's crops and batch
size, from Fashion-MNIST (in memory) and from a folder of JPEGs decoded from disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
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

from dinotwins.bench_ceiling import RecordProducts, matmul_ceiling, slowest_products
from dinotwins.cli import OneLineParser
from dinotwins.config import TrainConfig, available_presets, build_config, dotted_to_nested, load_preset, merge
from dinotwins.data.augment import MultiCrop
from dinotwins.errors import UserError
from dinotwins.objectives import METHODS
from dinotwins.training import distributed
from dinotwins.training.distributed import resolve_device, synchronize
from dinotwins.training.precision import matmul_seconds, pick_precision

# Inside the timing nothing ends, saves or logs; random images stand in for the data.
NEVER = {"max_steps": 10**9, "epochs": 10**6, "save_every": 10**9, "log_every": 10**9}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m dinotwins.bench", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="bench", help=f"named settings: {', '.join(available_presets())} "
                   "(default: bench)")
    p.add_argument("--method", choices=METHODS, default="dino")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, as in train.py, e.g. --set precision=fp32 --set attention=explicit "
                        "--set backward_per_resolution=false (repeatable)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    p.add_argument("--data-pipeline", action="store_true", help="measure the data pipeline instead")
    p.add_argument("--official", type=Path, metavar="PATH",
                   help="also time the official DINO step (a clone of facebookresearch/dino at PATH) at the same "
                        "shape, in the same run (bench_official.py); ours then runs without iBOT and KoLeo, which the "
                        "official step lacks")
    p.add_argument("--retrieval", type=Path, metavar="DIR",
                   help="measure search in an extraction folder's index instead (python -m dinotwins.index DIR)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after the timing, profile --steps more steps of ours (and of the official step with "
                        "--official) and print the ROWS operators with the most self CPU time to stderr")
    p.add_argument("--products", type=int, default=0, metavar="ROWS",
                   help="after the timing, print to stderr the ROWS matrix products of our step with the most time "
                        "when each is timed alone (the matmul ceiling's parts): share, speed against the peak, shapes")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


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


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The preset, the method and the --set overrides, as train.py resolves them; then `NEVER`, and one batch of
    synthetic images behind the sampler."""
    data = merge(merge(load_preset(args.preset), {"method": args.method}), dotted_to_nested(args.set))
    cfg = build_config(merge(data, NEVER))
    return dataclasses.replace(cfg, data=f"synthetic:{max(64, cfg.batch_size)}")


def peak_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10,
                       trials: int = 3) -> float:
    """TFLOP/s of an n x n x n matmul in `dtype` on `device`, the best of `trials` timings of `repeats` matmuls:
    the roofline the step is compared with. n defaults to 2048 on a CPU and 8192 on a GPU, whose peak a 2048
    product does not reach."""
    n = n or (8192 if device.type == "cuda" else 2048)
    return 2 * n**3 * repeats / matmul_seconds(dtype, n, repeats, trials, device=device, warmup=2) / 1e12


def cpu_isa_caps() -> dict[str, str]:
    """The instruction sets the loaded libraries use, where capped below the CPU's own: ATen's kernels
    (ATEN_CPU_CAPABILITY), oneDNN (ONEDNN_MAX_CPU_ISA) and MKL (MKL_ENABLE_INSTRUCTIONS). Capping all three to AVX2
    runs this code as on an AVX2-only CPU (README, Performance)."""
    caps = {"aten": torch.backends.cpu.get_cpu_capability()}
    for key, env in (("onednn_max", "ONEDNN_MAX_CPU_ISA"), ("mkl", "MKL_ENABLE_INSTRUCTIONS")):
        if os.environ.get(env):
            caps[key] = os.environ[env]
    return caps


def cpu_description() -> dict[str, str | list[str] | dict[str, str]]:
    """The CPU's model name, the instruction-set flags that decide the dtype (from /proc/cpuinfo) and the
    instruction sets the libraries were capped to, if any (`cpu_isa`)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": "unknown", "cpu_flags": [], "cpu_isa": cpu_isa_caps()}
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    return {"cpu": name, "cpu_flags": [f for f in wanted if f in flags], "cpu_isa": cpu_isa_caps()}


def bench_step(cfg: TrainConfig, steps: int, warmup: int, profile_rows: int = 0,
               rivals: dict[str, Callable[[], None]] | None = None, product_rows: int = 0) -> dict[str, float | str]:
    """Our step's speed and FLOP use at `cfg`. `rivals` (name -> one step of other code, e.g. the official DINO
    step) are timed interleaved with ours, one step of each per round after their own warm-up, so a machine whose
    speed drifts (shared CPUs) slows every side alike; each gets `{name}_img_per_s` and `speedup_over_{name}`."""
    batch, size = cfg.batch_size, cfg.model.image_size
    rivals = rivals or {}
    with tempfile.TemporaryDirectory() as tmp:
        # FLOPs are counted on an eager step (the counter cannot see inside compiled graphs).
        eager = _bench_trainer(cfg, Path(tmp) / "eager", compile=False)
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=eager.device)
        eager.train_step(images, 0)
        # one step counts the FLOPs and records the matrix products' shapes (for the ceiling after the timing)
        with FlopCounterMode(display=False) as counter, RecordProducts() as products:
            eager.train_step(images, 1)
        flops_per_step = counter.get_total_flops()
        trainer = _bench_trainer(cfg, Path(tmp) / "timed", compile=True) if cfg.compile else eager
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
        # the roofline in the step's dtype and, where bf16 is native, in the other one too
        peak_dtypes = [dtype, *(other for other in (torch.float32, torch.bfloat16)
                                if other != dtype and pick_precision("auto", device) == torch.bfloat16)]
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
            if distributed.current().is_main:
                print(f"matrix products of one step ({cfg.method}), each timed alone, against a {peak_now:.3f} "
                      "TFLOP/s peak", *lines, sep="\n", file=sys.stderr)
        syncs = {name: count_device_syncs(run) for name, run in sides.items()} if device.type == "cuda" else {}
        for name, run in sides.items() if profile_rows else ():
            print_profile(run, steps, profile_rows, f"{name} ({cfg.method}, {dtype})" if name == "ours" else name)
    flop_share = ceiling["matmul_gflop_per_step"] * 1e9 / flops_per_step
    world = distributed.current().world_size
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


def official_rivals(repo: Path, cfg: TrainConfig) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    """The official step at this shape in its own precision on this device (fp32 on a CPU), and, where ours runs in
    bf16, under bf16 autocast too: ({'official': step, 'official_bf16': step}, facts for the result)."""
    from dinotwins.bench_official import official_commit, official_step

    device = resolve_device(cfg.device)
    rivals = {"official": official_step(repo, cfg, device=device)}
    if device.type == "cpu" and pick_precision(cfg.precision, device) == torch.bfloat16:
        rivals["official_bf16"] = official_step(repo, cfg, bf16=True)
    dtype = ("float16 autocast with loss scaling" if device.type == "cuda" else
             "float32 (and bfloat16 autocast)" if "official_bf16" in rivals else "float32")
    return rivals, {"official_commit": official_commit(repo), "official_dtype": dtype,
                    "timing": "interleaved, one step of each per round"}


def match_official(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, str]]:
    """`cfg` without the ingredients the official DINO step lacks (iBOT, KoLeo), so both sides compute the same
    objective; the facts name what was turned off."""
    dino, ibot = cfg.objectives["dino"], cfg.objectives["ibot"]
    off = [name for name, on in (("ibot.weight=0", ibot.weight > 0), ("dino.koleo_weight=0", dino.koleo_weight > 0))
           if on]
    if not off:
        return cfg, {}
    objectives = {**cfg.objectives, "dino": dataclasses.replace(dino, koleo_weight=0.0),
                  "ibot": dataclasses.replace(ibot, weight=0.0)}
    return dataclasses.replace(cfg, objectives=objectives), {"matched_to_official": ", ".join(off)}


def _bench_trainer(cfg: TrainConfig, out: Path, compile: bool):
    from dinotwins.training.schedules import RunLength
    from dinotwins.training.trainer import Trainer

    cfg = dataclasses.replace(cfg, compile=compile)
    trainer = Trainer(cfg, out, progress=False)
    trainer.length = RunLength(10**9, 10**9)  # keep the first-epoch phases (DINO's last-layer freeze) out of the timing
    return trainer


def bench_data(cfg: TrainConfig, steps: int) -> dict[str, float | str]:
    """Augmented multi-crop images per second, Fashion-MNIST in memory and a folder of JPEGs from disk."""
    from PIL import Image

    from dinotwins.data import load_dataset
    from dinotwins.data.sampler import EpochSampler

    crop, batch, size = MultiCrop(cfg.augment), cfg.batch_size, cfg.model.image_size
    results: dict[str, float | str] = {"batch_size": batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        fmnist = load_dataset("fashion-mnist", "train", image_size=size)
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        for i in range(512):
            array = fmnist.images[i, 0].numpy()
            Image.fromarray(array).convert("RGB").resize((96, 96)).save(folder / f"{i:04d}.jpg", quality=90)
        for name, spec in (("fashion_mnist", "fashion-mnist"), ("jpeg_folder", f"folder:{folder}")):
            t0 = time.perf_counter()
            dataset = load_dataset(spec, "train", image_size=size)
            load_s = time.perf_counter() - t0
            sampler = EpochSampler(len(dataset), batch, seed=0)
            batches = itertools.chain.from_iterable(sampler.batches(epoch) for epoch in itertools.count())
            generator = torch.Generator().manual_seed(0)
            n, start = 0, None
            for i, indices in enumerate(batches):
                if i == 2:
                    start = time.perf_counter()
                if i >= 2 + steps:
                    break
                crop(dataset.get_batch(indices), generator)
                n += batch if i >= 2 else 0
            results[f"{name}_img_per_s"] = round(n / (time.perf_counter() - start), 1)
            results[f"{name}_load_s"] = round(load_s, 3)
    return results


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.retrieval is not None:
            from dinotwins.collection.bench import bench_retrieval

            result = bench_retrieval(args.retrieval)
        else:
            cfg = bench_config(args)
            if args.data_pipeline:
                result = bench_data(cfg, args.steps)
            else:
                distributed.setup(cfg.device)  # under torchrun, before the official step looks for a group
                facts = {}
                if args.official is not None:
                    cfg, facts = match_official(cfg)
                    rivals, official_facts = official_rivals(args.official, cfg)
                    facts.update(official_facts)
                else:
                    rivals = {}
                result = {**bench_step(cfg, args.steps, args.warmup, args.profile, rivals, args.products), **facts}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    is_main = distributed.current().is_main
    distributed.teardown()
    if not is_main:  # under torchrun rank 0 speaks for the group
        return 0
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
