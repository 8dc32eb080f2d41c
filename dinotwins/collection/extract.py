"""`python -m dinotwins.extract MODEL --data SPEC --out DIR`: every image's CLS embedding, into shards.

Under `torchrun` (any number of processes and nodes; gloo on CPU, NCCL on GPU) rank r takes the shards k with
k % world == r, so ranks share no work; without torchrun one process takes them all. Each shard is computed in
fixed batches (`--batch-size`) of its own images, so the result does not depend on how many processes made it (a
test compares one process with two). Resumable: a rerun of the same command keeps every shard that checks out
(its files match their records and name this extraction) and computes the rest, so a killed extraction loses only
the shards it was writing and no shard is written twice; a folder holding another model's or another data's
extraction is refused. Embeddings are the evaluation's own (`features.embed_batch` on `eval_transform`), stored
as float16, computed in the precision the folder's manifest records (chosen when the extraction began), so a
resume computes as its first part did. Progress: a bar with images/s on rank 0.

What it is not: no index (collection/index.py), no app.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dinotwins.cli import OneLineParser
from dinotwins.collection.shards import Manifest, read_manifest, shard_problem, write_manifest, write_shard
from dinotwins.data import SPEC_SYNTAX, load_dataset
from dinotwins.errors import UserError

SHARD_SIZE = 65536  # images per shard: 24 MB of float16 at 192 dimensions
BATCH_SIZE = 256


def extract(model, dataset, out: Path, *, shard_size: int = SHARD_SIZE, batch_size: int = BATCH_SIZE,
            progress: bool = True, model_path: str | Path = "") -> Manifest:
    """Write (or complete) the extraction of `dataset` under `model` into `out`; returns its manifest. Under
    torchrun, call it in every rank after `distributed.setup` (the model on the rank's device)."""
    from dinotwins.models.preprocess import eval_transform
    from dinotwins.evaluation.features import PREPROCESSING_VERSION, embed_batch, feature_dtype, normalization_of
    from dinotwins.training import distributed, precision

    precision.agree_across_ranks()  # every rank embeds in rank 0's dtype, so shards match whatever the world size
    info = distributed.current()
    wanted = Manifest.new(model={"name": model.name, "weights_hash": model.weights_hash,
                                 "image_size": model.image_size, "embed_dim": model.embed_dim},
                          data=dataset.name, split=dataset.split, count=len(dataset), shard_size=shard_size,
                          dim=model.embed_dim, classes=list(dataset.classes) if dataset.classes else None,
                          preprocessing=PREPROCESSING_VERSION,
                          model_path=str(Path(model_path).resolve()) if model_path else "",
                          precision=precision.precision_name(feature_dtype(model)))
    out = Path(out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        found = read_manifest(out)
        if found is not None and not found.same_extraction(wanted):
            raise UserError(f"{out} holds an extraction of {found.model['name']} on {found.data} {found.split} "
                            f"({found.count} images, shards of {found.shard_size}); extract into another --out or "
                            f"delete it")
        if found is None:
            write_manifest(out, wanted)
    distributed.barrier()
    manifest = read_manifest(out)
    mine = [k for k in range(manifest.shards) if k % info.world_size == info.rank]
    todo = [k for k in mine if shard_problem(out, manifest, k) is not None]
    mean, std = normalization_of(model)
    compute = manifest.precision or "auto"  # the folder's own precision when it has begun (shards.Manifest)
    total = sum(len(manifest.rows(k)) for k in todo)
    with tqdm(total=total, unit="img", desc=f"extract {model.name} (rank {info.rank}/{info.world_size})",
              disable=not (progress and info.is_main), file=sys.stderr, dynamic_ncols=True) as bar:
        for k in todo:
            rows = manifest.rows(k)
            parts = []
            for start in range(rows.start, rows.stop, batch_size):
                indices = torch.arange(start, min(rows.stop, start + batch_size))
                images = dataset.get_batch(indices).to(model.device)
                parts.append(embed_batch(model, eval_transform(images, model.image_size, mean, std),
                                         compute))
                bar.update(len(indices))
            labels = (dataset.labels[rows.start:rows.stop].numpy() if dataset.labels is not None
                      else np.full(len(rows), -1, np.int64))
            write_shard(out, manifest, k, np.concatenate(parts), labels)
    distributed.barrier()
    if info.is_main and not manifest.complete:
        missing = [k for k in range(manifest.shards) if shard_problem(out, manifest, k, full=False) is not None]
        if missing:
            raise UserError(f"shards {missing[:5]} of {out} are missing after the extraction; run it again")
        write_manifest(out, dataclasses.replace(manifest, complete=True))
    distributed.barrier()
    return read_manifest(out)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m dinotwins.extract",
                      description="Every image's CLS embedding under one model, written as resumable shards "
                                  "(run it under torchrun to share the work between processes).")
    p.add_argument("model", metavar="MODEL", help="run directory, exported .safetensors or official DINO .pth")
    p.add_argument("--data", required=True, help=SPEC_SYNTAX)
    p.add_argument("--split", choices=("train", "test"), default="train", help="which split (default train)")
    p.add_argument("--out", required=True, type=Path, help="the extraction folder (resumed when it holds this job)")
    p.add_argument("--shard-size", type=int, default=SHARD_SIZE, help=f"images per shard (default {SHARD_SIZE})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per forward (default {BATCH_SIZE})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for flag, value in (("--shard-size", args.shard_size), ("--batch-size", args.batch_size)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        from dinotwins.models.load import load_model
        from dinotwins.training import distributed

        info = distributed.setup(args.device)
        model = load_model(args.model, device=info.device)
        dataset = load_dataset(args.data, args.split, image_size=model.image_size, budget=0)
        start = time.perf_counter()
        manifest = extract(model, dataset, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                           progress=not args.no_progress, model_path=args.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        from dinotwins.training import distributed

        distributed.teardown()
    print(f"{args.out}: {manifest.count} embeddings of {manifest.dim} dimensions in {manifest.shards} shards "
          f"({time.perf_counter() - start:.1f} s)")
    return 0
