"""Benchmark of the real training step and of the data pipeline: `python -m dinotwins.bench --help`.

Step mode times `Trainer.train_step`, the very code train.py runs (multi-crop of a uint8 batch, student and
teacher forward over all crops, loss, backward, clipping, optimizer step, EMA and center update), on random
images after warm-up, and reports img/s, seconds per step, GFLOP per image (counted by
torch.utils.flop_counter over one step), achieved TFLOP/s, the peak TFLOP/s of a large matmul on the same device
and dtype (measured after every timed step, so a shared machine's drift moves both alike), MFU = achieved / peak
(the median over steps of each step's own ratio), peak memory, and the matmul ceiling: the step's matrix products
timed alone at their own shapes (benchmark/ceiling.py), the fraction of the limit the step would reach if nothing else
in it took time; on a GPU also `device_syncs_per_step`, how often one step makes the host wait for the device.

What runs is a run's config, set as for train.py: `--preset` (default `bench`, the issue's CPU configuration;
dinotwins/presets/bench.yaml), `--method` and `--set key=value`, e.g. `--set precision=fp32 --set attention=fused`,
`--set backward_per_resolution=false`, `--set compile=true`, `--set device=cuda`.

Under `torchrun` (e.g. `OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m dinotwins.bench --threads 1
--set batch_size=32`: one process per core, as a DDP training would run) each process times its own step and
rank 0 prints one row for the group: the batch is the group's, a round lasts as long as its slowest process, and the
peak is the sum of the processes' peaks measured side by side (the matmul ceiling's product counts and solo time
stay rank 0's own, its GFLOP the group's); the official step then runs in DDP too.

Data mode (`--data-pipeline`) measures augmented multi-crop images per second, with the config's crops and batch
size, from Fashion-MNIST (in memory) and from a folder of JPEGs decoded from disk.

Patch-embedding mode (`--patch-embedding PAIRS`) times the patch embedding as one matrix product against timm's
convolution, alone and in PAIRS pairs of whole steps (benchmark/patch_embedding.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from dinotwins.benchmark.data_pipeline import bench_data
from dinotwins.benchmark.official import match_official, official_rivals
from dinotwins.benchmark.step import bench_step
from dinotwins.cli import OneLineParser
from dinotwins.config import TrainConfig, available_presets, build_config, dotted_to_nested, load_preset, merge
from dinotwins.errors import UserError
from dinotwins.objectives import METHODS
from dinotwins.training import distributed

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
    p.add_argument("--patch-embedding", type=int, default=0, metavar="PAIRS",
                   help="time the patch embedding as a matrix product against timm's convolution instead: alone, "
                        "and in PAIRS pairs of training steps")
    p.add_argument("--official", type=Path, metavar="PATH",
                   help="also time the official DINO step (a clone of facebookresearch/dino at PATH) at the same "
                        "shape, in the same run (benchmark/official.py); ours then runs without iBOT and KoLeo, "
                        "which the official step lacks")
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


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The preset, the method and the --set overrides, as train.py resolves them; then `NEVER`, and one batch of
    synthetic images behind the sampler."""
    data = merge(merge(load_preset(args.preset), {"method": args.method}), dotted_to_nested(args.set))
    cfg = build_config(merge(data, NEVER))
    return dataclasses.replace(cfg, data=f"synthetic:{max(64, cfg.batch_size)}")


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
            elif args.patch_embedding:
                from dinotwins.benchmark.patch_embedding import bench_patch_embedding

                result = bench_patch_embedding(cfg, args.patch_embedding, args.warmup)
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
