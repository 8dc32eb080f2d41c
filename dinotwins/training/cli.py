"""`train.py` command line: flags -> a TrainConfig, once, at the edge; then `trainer.train`.

With --resume the run's own config.yaml is the base and flags given again are applied on top, so
`train.py --out runs/x --resume` continues a run with exactly the settings it started with.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from dinotwins.cli import OneLineParser
from dinotwins.config import available_presets, build_config, dotted_to_nested, load_preset, merge, read_yaml
from dinotwins.data import SPEC_SYNTAX, sources_help
from dinotwins.errors import TrainingInterrupted, TrainingStopped, UserError
from dinotwins.objectives import METHODS


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="train.py", description="Train DINO, Barlow Twins or the DinoTwins hybrid.",
                      epilog=f"data sources (--data SPEC):\n{sources_help()}",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, help=f"objective: {' | '.join(METHODS)}")
    p.add_argument("--data", help=SPEC_SYNTAX)
    p.add_argument("--out", required=True, type=Path, help="run directory (must be new unless --resume)")
    p.add_argument("--preset", help=f"named settings: {', '.join(available_presets())}")
    p.add_argument("--config", type=Path, help="YAML file of settings (keys as in a run's config.yaml)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (schedules end there too)")
    p.add_argument("--batch-size", type=int, help="images per process and step")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast where the device computes it fast")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the student and teacher (a CPU needs a C++ compiler)")
    p.add_argument("--save-every", type=int, help="steps between resumable checkpoints")
    p.add_argument("--export-every", type=int,
                   help="also keep the exported weights every N steps in exports/ (a learning curve; 0: never)")
    p.add_argument("--stop-on-collapse", action="store_true", default=None,
                   help="stop (exit 3) instead of warning when the collapse monitor fires")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set dino.out_dim=2048 --set model.depth=6 (repeatable)")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from RUN's newest checkpoint (its modules, position embeddings resized to this "
                        "run's image size) with a fresh optimizer and schedules: e.g. a short higher-resolution phase")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest good checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Merge defaults < preset < --config < flags into one nested dict."""
    data: dict[str, Any] = {}
    if args.resume and (args.out / "config.yaml").is_file():
        data = read_yaml(args.out / "config.yaml")
    if args.preset:
        data = merge(data, load_preset(args.preset))
    if args.config:
        data = merge(data, read_yaml(args.config))
    flags = {"method": args.method, "data": args.data, "epochs": args.epochs, "max_steps": args.max_steps,
             "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
             "precision": args.precision, "compile": args.compile, "save_every": args.save_every,
             "export_every": args.export_every, "stop_on_collapse": args.stop_on_collapse,
             "init_from": args.init_from}
    data = merge(data, {k: v for k, v in flags.items() if v is not None})
    data = merge(data, dotted_to_nested(args.set))
    if "method" not in data:
        raise UserError(f"--method is required: one of {', '.join(METHODS)}")
    if "data" not in data:
        raise UserError("--data is required, e.g. --data fashion-mnist or --data folder:PATH")
    return data


def main(argv: list[str] | None = None) -> int:
    warnings.simplefilter("default")
    try:
        args = build_parser().parse_args(argv)  # a bad flag is reported before torch is imported
        cfg = build_config(resolve_config(args))  # so is a bad common setting; then the objectives' modules load
        from dinotwins.training.trainer import train  # the other heavy imports (timm, data) after every check

        out = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted: resume with --resume (from the last checkpoint)", file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"done: {out} (model: {out / 'model.safetensors'})")
    return 0


__all__ = ["main", "build_parser", "resolve_config"]
