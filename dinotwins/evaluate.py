"""Evaluate frozen self-supervised ViTs: `python -m dinotwins.evaluate MODEL [MODEL ...] --data SPEC`.

One row per model, plus baselines (raw pixels; a randomly initialized ViT for each distinct model shape, named by
its blocks, width, heads, image and patch size, so models of two sizes get two random rows):
- k-NN: the DINO paper's weighted vote (k = 20, T = 0.07) of the test split against every train label (knn.py);
- linear probe: logistic regression on a class-balanced, seeded 10 % of the train labels, the DinoTwins paper's
  low-label protocol (probe.py);
- attention-mask Jaccard on `synthetic` (the only data with exact object masks): the last layer's CLS attention
  cut at 60 % of its mass, against the object, for the mean-of-heads map and the best head (attention_masks.py).
  When --data has masks its test split is used; otherwise (Fashion-MNIST, CIFAR-10, folders) the first
  `MASK_IMAGES` images of synthetic's test split, generated at the model's size;
- embedding health of the test features: effective rank and the std of L2-normalized embeddings
  (embedding_health.py).

Data: the train split is the labeled pool, the test split the queries. Both are loaded once, stored at the first
MODEL's image size (the size `train.py` stores folder and synthetic data at; CIFAR-10 and Fashion-MNIST keep their
native size), and resized to each model's own size by `augment.eval_transform`. The raw-pixel baseline uses the
stored images as they are. For the attention masks of a model whose size differs from the stored one, the
synthetic test split is generated again at that model's size. Features are cached on disk (features.py).

Unlabeled data: k-NN and probe figures are null, the rest is still measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinotwins.attention_masks import KEEP_MASS, attention_jaccard
from dinotwins.data import SPEC_SYNTAX, load_dataset
from dinotwins.data.augment import eval_transform
from dinotwins.data.dataset import ImageDataset
from dinotwins.embedding_health import effective_rank, embedding_std
from dinotwins.errors import UserError
from dinotwins.features import BATCH_SIZE, DEFAULT_CACHE_DIR, extract_features, normalization_of, raw_pixel_features
from dinotwins.knn import KNN_K, KNN_TEMPERATURE, knn_classify
from dinotwins.probe import linear_probe

LABEL_FRACTION = 0.1  # the DinoTwins paper's low-label protocol
MASK_DATA = "synthetic"  # where attention masks are scored when --data has no object masks
MASK_IMAGES = 1024
COLUMNS = ("model", "knn_top1", "knn_top5", "linear_top1", "linear_top5", "attn_jaccard_mean_heads",
           "attn_jaccard_best_head", "effective_rank", "embedding_std", "num_train", "num_test")
HEADERS = ("model", "k-NN top-1", "k-NN top-5", "linear top-1", "linear top-5", "attn J (mean)",
           "attn J (best head)", "eff. rank", "emb. std", "train", "test")
RAW_PIXELS = "raw pixels"


def check_options(k: int, temperature: float, label_fraction: float) -> None:
    """UserError naming the flag when an option is out of range."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if not temperature > 0:
        raise UserError(f"--temperature must be positive, got {temperature}; DINO uses 0.07")
    if not 0.0 < label_fraction <= 1.0:
        raise UserError(f"--label-fraction must be in (0, 1], got {label_fraction}; e.g. 0.1 for 10 %")


def evaluate_model(model, train: ImageDataset, test: ImageDataset, *, k: int = KNN_K,
                   temperature: float = KNN_TEMPERATURE, label_fraction: float = LABEL_FRACTION, seed: int = 0,
                   cache_dir: str | Path | None = None, keep_mass: float = KEEP_MASS,
                   progress: bool = False, attention_scale: float = 1.0) -> dict[str, Any]:
    """One row (keys `COLUMNS`) for a `LoadedModel`: train = labeled pool, test = queries."""
    check_options(k, temperature, label_fraction)
    train_feats = extract_features(model, train, cache_dir=cache_dir, progress=progress)
    test_feats = extract_features(model, test, cache_dir=cache_dir, progress=progress)
    row = score_features(model.name, train_feats, train.labels, test_feats, test.labels, k=k,
                         temperature=temperature, label_fraction=label_fraction, seed=seed)
    row["attn_jaccard_mean_heads"], row["attn_jaccard_best_head"] = attention_scores(model, test, keep_mass,
                                                                                      scale=attention_scale)
    return {key: row[key] for key in COLUMNS}


def evaluate_raw_pixels(train: ImageDataset, test: ImageDataset, *, k: int = KNN_K,
                        temperature: float = KNN_TEMPERATURE, label_fraction: float = LABEL_FRACTION,
                        seed: int = 0) -> dict[str, Any]:
    """The raw-pixel baseline's row: the stored images, flattened, as features; no attention."""
    check_options(k, temperature, label_fraction)
    row = score_features(RAW_PIXELS, raw_pixel_features(train), train.labels, raw_pixel_features(test),
                         test.labels, k=k, temperature=temperature, label_fraction=label_fraction, seed=seed)
    row["attn_jaccard_mean_heads"] = row["attn_jaccard_best_head"] = None
    return {key: row[key] for key in COLUMNS}


def score_features(name: str, train_feats: np.ndarray, train_labels: torch.Tensor | None, test_feats: np.ndarray,
                   test_labels: torch.Tensor | None, *, k: int, temperature: float, label_fraction: float,
                   seed: int) -> dict[str, Any]:
    """k-NN, linear probe and embedding health of given features (k-NN and probe None without labels)."""
    row: dict[str, Any] = {"model": name, "num_train": len(train_feats), "num_test": len(test_feats),
                           "knn_top1": None, "knn_top5": None, "linear_top1": None, "linear_top5": None}
    if train_labels is not None and test_labels is not None:
        train_y, test_y = train_labels.cpu().numpy(), test_labels.cpu().numpy()
        row["knn_top1"], row["knn_top5"] = knn_classify(train_feats, train_y, test_feats, test_y, k=k,
                                                        temperature=temperature)
        row["linear_top1"], row["linear_top5"] = linear_probe(train_feats, train_y, test_feats, test_y,
                                                              label_fraction=label_fraction, seed=seed)
    row["effective_rank"] = effective_rank(test_feats)
    row["embedding_std"] = embedding_std(test_feats)
    return row


def attention_scores(model, test: ImageDataset, keep_mass: float = KEEP_MASS, batch_size: int = BATCH_SIZE,
                     scale: float = 1.0) -> tuple[float | None, float | None]:
    """(Jaccard of the mean-of-heads masks, of the best head) on the test split's object masks, the model run at
    `scale` times its training size (`LoadedModel.input_size`).

    A test split without masks is replaced by the first `MASK_IMAGES` of synthetic's test split. When the stored
    size differs from the input size, the same split is generated again at the input size (synthetic and scenes
    render at any size) and its first len(test) images are used (any sample of the split measures the same thing).
    """
    size = model.input_size(scale)
    if test.masks is None:
        test = limit_dataset(load_dataset(MASK_DATA, "test", image_size=size), MASK_IMAGES, first=True)
    if test.image_shape[-1] != size:
        regenerated = load_dataset(test.name, test.split, image_size=size)
        test = limit_dataset(regenerated, len(test), first=True)
    mean, std = normalization_of(model)
    maps = []
    with torch.inference_mode():
        for start in range(0, len(test), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(test)))
            x = eval_transform(test.get_batch(indices).to(model.device), size, mean, std)
            maps.append(model.attention(x).cpu())  # (B, heads, h, w)
    mean_heads, per_head = attention_jaccard(torch.cat(maps), test.masks.cpu(), keep_mass)
    return mean_heads, per_head.max().item()


def limit_dataset(dataset: ImageDataset, n: int | None, seed: int = 0, *, first: bool = False) -> ImageDataset:
    """At most n images: a seeded random subset in the original order (or the first n), masks and labels along."""
    if n is None or n >= len(dataset):
        return dataset
    if first:
        indices = torch.arange(n)
    else:
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    pick = (lambda t: None if t is None else t[indices.to(t.device)])
    files = None if dataset.files is None else [dataset.files[i] for i in indices.tolist()]
    return dataclasses.replace(dataset, images=pick(dataset.images), labels=pick(dataset.labels),
                               masks=pick(dataset.masks), files=files)


# ------------------------------------------------------------------------------------------------ output
def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.startswith(("knn_", "linear_")):
        return f"{100 * value:.1f}%"
    if key.startswith("attn_"):
        return f"{value:.3f}"
    if key == "effective_rank":
        return f"{value:.1f}"
    if key == "embedding_std":
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [list(HEADERS)] + [[_cell(key, row[key]) for key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|---" + "|---:" * (len(HEADERS) - 1) + "|"]
    lines += ["| " + " | ".join(_cell(key, row[key]) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def format_json(rows: list[dict[str, Any]]) -> str:
    """A JSON list of the rows; NaN becomes null (JSON has no NaN)."""
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    return json.dumps(clean, indent=2)


# ------------------------------------------------------------------------------------------------ CLI
class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (`error: ...`, exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see python -m dinotwins.evaluate --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m dinotwins.evaluate",
                       description="k-NN, linear probe, attention masks and embedding health of frozen ViTs.")
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
    p.add_argument("--limit-train", type=int, metavar="N", help="a seeded random N of the train split")
    p.add_argument("--limit-test", type=int, metavar="N", help="a seeded random N of the test split")
    p.add_argument("--seed", type=int, default=0, help="subsets, the probe's labeled split, the random-init ViT")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="add raw-pixel and random-init ViT rows (default: yes)")
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
    for flag, value in (("--limit-train", args.limit_train), ("--limit-test", args.limit_test)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    device = _device(args.device)
    models = [load_model(path, device=device) for path in args.models]
    for model, name in zip(models, distinct_names([m.name for m in models], args.models)):
        model.name = name
    size = models[0].image_size
    train = limit_dataset(load_dataset(args.data, "train", image_size=size), args.limit_train, args.seed)
    test = limit_dataset(load_dataset(args.data, "test", image_size=size), args.limit_test, args.seed)
    return evaluate_all(models, train, test, k=args.k, temperature=args.temperature,
                        label_fraction=args.label_fraction, seed=args.seed, baselines=args.baselines,
                        cache_dir=args.cache_dir, progress=not args.no_progress,
                        attention_scale=args.attention_scale)


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


def evaluate_all(models: list, train: ImageDataset, test: ImageDataset, *, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE, label_fraction: float = LABEL_FRACTION, seed: int = 0,
                 baselines: bool = True, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                 progress: bool = False, attention_scale: float = 1.0) -> list[dict[str, Any]]:
    """The rows of `LoadedModel`s, then (with `baselines`) raw pixels and one random-init ViT per distinct shape
    among the models, in the models' order."""
    from dinotwins.models.load import LoadedModel

    options = dict(k=k, temperature=temperature, label_fraction=label_fraction, seed=seed)
    models = list(models)
    rows = [evaluate_model(m, train, test, cache_dir=cache_dir, progress=progress, attention_scale=attention_scale,
                           **options) for m in models]
    if baselines:
        rows.append(evaluate_raw_pixels(train, test, **options))
        randoms: dict[str, LoadedModel] = {}
        for m in models:  # one per shape: settings that leave the weights alone (drop path) do not count
            random_model = LoadedModel.random_like(m, seed=seed)
            randoms.setdefault(random_model.name, random_model)
        rows += [evaluate_model(m, train, test, cache_dir=cache_dir, progress=progress,
                                attention_scale=attention_scale, **options) for m in randoms.values()]
    return rows


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


if __name__ == "__main__":
    sys.exit(main())
