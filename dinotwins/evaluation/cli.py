"""`python -m dinotwins.evaluate MODEL [MODEL ...] --data SPEC`: the command line of the evaluation (rows.py).

Flags -> the models (`load_model`) and the data's two splits -> `rows.evaluate_all` -> a table (plain, Markdown
or JSON). Every option is checked before a model is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from dinotwins.cli import OneLineParser
from dinotwins.data import SPEC_SYNTAX, load_dataset, sources_help
from dinotwins.errors import UserError
from dinotwins.evaluation.features import DEFAULT_CACHE_DIR
from dinotwins.evaluation.knn import KNN_K, KNN_TEMPERATURE
from dinotwins.evaluation.rows import (LABEL_FRACTION, RANDOM_INITS, check_options, evaluate_all, format_json,
                                       format_markdown, format_table, limit_dataset)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m dinotwins.evaluate",
                      description="k-NN, linear probe, attention masks and embedding health of frozen ViTs.",
                      epilog=f"data sources (--data SPEC):\n{sources_help()}",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="run directory, exported .safetensors, or official DINO .pth (as load_model takes)")
    p.add_argument("--data", required=True, help=SPEC_SYNTAX)
    p.add_argument("--label-fraction", type=float, default=LABEL_FRACTION,
                   help="share of train labels the linear probe sees, class-balanced (default 0.1, the DinoTwins "
                        "paper's protocol)")
    p.add_argument("--k", type=int, default=KNN_K, help="neighbours in the weighted k-NN vote (DINO: 20)")
    p.add_argument("--temperature", type=float, default=KNN_TEMPERATURE,
                   help="k-NN vote weight exp(similarity / T) (DINO: 0.07)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list of rows")
    output.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--attention-scale", type=float, default=1.0, metavar="S",
                   help="run each model at S times its training size for the attention masks (position embeddings "
                        "interpolated; finer maps), e.g. 1.5 or 2 (default 1)")
    p.add_argument("--attention-layer", type=int, default=0, metavar="L",
                   help="read the CLS attention of block L (1 = first), as the app's Layer control; default 0, the "
                        "last block")
    p.add_argument("--limit-train", type=int, metavar="N", help="a seeded random N of the train split")
    p.add_argument("--limit-test", type=int, metavar="N", help="a seeded random N of the test split")
    p.add_argument("--seed", type=int, default=0, help="subsets, the probe's labeled split, the random-init ViTs")
    p.add_argument("--random-inits", type=int, default=RANDOM_INITS, metavar="N",
                   help=f"random-init ViTs averaged in the baseline row, seeded --seed, --seed + 1, ... "
                        f"(default {RANDOM_INITS})")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="add raw-pixel and random-init ViT rows (default: yes)")
    p.add_argument("--own-mean-maps", action="store_true",
                   help="add, per model, its own mean attention map over the test images drawn as every image's "
                        "map: what its maps hold that does not depend on the image")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help=f"feature cache (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row the command prints, in order: the models, then the baselines."""
    from dinotwins.models.load import load_model  # heavy imports after the cheap checks

    check_options(args.k, args.temperature, args.label_fraction)
    if not args.attention_scale > 0:
        raise UserError(f"--attention-scale must be positive, got {args.attention_scale}; e.g. 1.5 or 2")
    if args.attention_layer < 0:
        raise UserError(f"--attention-layer must be a block number (1 = first) or 0 for the last, got "
                        f"{args.attention_layer}")
    for flag, value in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test),
                        ("--random-inits", args.random_inits)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    device = _device(args.device)
    models = [load_model(path, device=device) for path in args.models]
    for model, path in zip(models, args.models):
        if args.attention_layer > model.depth:
            raise UserError(f"--attention-layer {args.attention_layer}: {path} has {model.depth} blocks; pick 1 to "
                            f"{model.depth}, or 0 for the last")
    for model, name in zip(models, distinct_names([m.name for m in models], args.models)):
        model.name = name
    size = models[0].image_size
    train = limit_dataset(load_dataset(args.data, "train", image_size=size), args.limit_train, args.seed)
    test = limit_dataset(load_dataset(args.data, "test", image_size=size), args.limit_test, args.seed)
    return evaluate_all(models, train, test, k=args.k, temperature=args.temperature,
                        label_fraction=args.label_fraction, seed=args.seed, baselines=args.baselines,
                        cache_dir=args.cache_dir, progress=not args.no_progress,
                        attention_scale=args.attention_scale, attention_layer=args.attention_layer,
                        random_inits=args.random_inits, own_mean_maps=args.own_mean_maps)


def distinct_names(names: list[str], paths: list[str | Path]) -> list[str]:
    """Row names that tell the models apart: a name shared by several models (snapshots `run/exports/
    step_1000.safetensors` of two runs, say) becomes as many trailing parts of its path as make it unique."""
    counts = {n: names.count(n) for n in names}
    parts = [Path(p).expanduser().with_suffix("").parts if Path(p).suffix == ".safetensors"
             else Path(p).expanduser().parts for p in paths]
    out = []
    for name, tail in zip(names, parts):
        if counts[name] == 1:
            out.append(name)
            continue
        clashing = [q for n, q in zip(names, parts) if n == name]
        depth = 1
        while depth < len(tail) and sum(q[-depth:] == tail[-depth:] for q in clashing) > 1:
            depth += 1
        out.append("/".join(tail[-depth:]))
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        rows = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(format_json(rows))
    elif args.markdown:
        print(format_markdown(rows))
    else:
        print(format_table(rows))
    return 0
