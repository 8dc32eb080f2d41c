"""`python -m dinotwins.index DIR`: a FAISS index over an extraction folder, chosen by size and memory, tuned to a
recall target, written so that it can be memory-mapped.

Cosine similarity is the inner product of L2-normalized vectors. The index (FAISS's `index_factory`; autofaiss
was the first choice, but it pins numpy < 2 and would downgrade this environment's numpy, so its rules of thumb are
followed here instead):
- up to `EXACT_UP_TO` vectors: `Flat`, exact search;
- more, while the float32 vectors fit `--memory-gb`: `IVF{n},Flat` with n about 4 sqrt(N) lists (a power of two),
  trained on at most 64 vectors per list;
- beyond the budget: `OPQ{m},IVF{n},PQ{m}`, m bytes per vector (m = D / 4).
The search breadth (`nprobe`) is the smallest power of two whose recall@10 against exact search reaches
`--recall` on `QUERIES` held-out queries (collection vectors drawn with a seed; each query's own vector is left out
of both lists, so it does not count as a found neighbour). `index.faiss` and `index.json` (the choice, the breadth,
the measured recall, the build time, and the extraction's id) are written atomically beside the shards; opening
checks that the index belongs to this extraction, so neighbours never come from another model's embeddings.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from dinotwins.cli import OneLineParser
from dinotwins.collection.shards import Collection
from dinotwins.errors import UserError
from dinotwins.evaluation.knn import l2_normalize
from dinotwins.files import atomic_write, read_verified, write_with_checksum

INDEX_FILE, RECORD_FILE = "index.faiss", "index.json"
EXACT_UP_TO = 200_000
QUERIES = 1000
K = 10
MEMORY_GB = 2.0
RECALL = 0.95


def choose_factory(count: int, dim: int, memory_bytes: float) -> str:
    """The index_factory string for `count` vectors of `dim` under a memory budget (see the module docstring)."""
    if count <= EXACT_UP_TO:
        return "Flat"
    lists = 2 ** round(math.log2(4 * math.sqrt(count)))
    if count * dim * 4 <= memory_bytes:
        return f"IVF{lists},Flat"
    m = max(d for d in range(1, dim // 4 + 1) if dim % d == 0)
    return f"OPQ{m},IVF{lists},PQ{m}"


def exact_neighbours(collection: Collection, queries: np.ndarray, k: int) -> np.ndarray:
    """int64 (Q, k): the exact top-k inner-product neighbours of normalized `queries`, chunk by chunk."""
    best_sims = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.full((len(queries), k), -1, np.int64)
    for start, chunk in collection.chunks():
        sims = queries @ l2_normalize(chunk).T  # (Q, C)
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        merged_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, 1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        order = np.argsort(-merged_sims, axis=1, kind="stable")[:, :k]
        best_sims, best_ids = np.take_along_axis(merged_sims, order, 1), np.take_along_axis(merged_ids, order, 1)
    return best_ids


def recall_at_k(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int = K) -> float:
    """Mean share of the exact top-k (the query's own vector left out of both) that the search found."""
    hits = 0
    for row_found, row_truth, me in zip(found, truth, own):
        want = [i for i in row_truth if i != me][:k]
        got = {i for i in row_found if i != me}
        hits += len(got.intersection(want))
    return hits / (k * len(found))


def set_breadth(index: faiss.Index, nprobe: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


def build_index(collection: Collection, memory_gb: float = MEMORY_GB, recall: float = RECALL,
                seed: int = 0) -> dict:
    """Build, tune and write the index of `collection` into its folder; returns its record."""
    start = time.perf_counter()
    count, dim = len(collection), collection.dim
    factory = choose_factory(count, dim, memory_gb * 1024**3)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        sample = np.sort(rng.choice(count, min(count, 64 * ivf.nlist), replace=False))
        index.train(l2_normalize(collection.take(sample)))
    for _, chunk in collection.chunks():
        index.add(l2_normalize(chunk))
    own = np.sort(rng.choice(count, min(count, QUERIES), replace=False))
    queries = l2_normalize(collection.take(own))
    truth = exact_neighbours(collection, queries, K + 1)
    lists = faiss.try_extract_index_ivf(index).nlist if faiss.try_extract_index_ivf(index) is not None else 1
    nprobe, measured = 1, 0.0
    while True:
        set_breadth(index, nprobe)
        measured = recall_at_k(index.search(queries, K + 1)[1], truth, own)
        if measured >= recall or nprobe >= lists:
            break
        nprobe *= 2
    folder = collection.folder
    atomic_write(folder / INDEX_FILE, lambda path: faiss.write_index(index, str(path)))
    record = {"factory": factory, "nprobe": nprobe, "recall_at_10": round(measured, 4), "recall_target": recall,
              "queries": len(own), "num_vectors": count, "dim": dim, "memory_gb": memory_gb,
              "build_s": round(time.perf_counter() - start, 1), "extraction": collection.manifest.extraction,
              "model": collection.manifest.model, "index_bytes": (folder / INDEX_FILE).stat().st_size}
    write_with_checksum(folder / RECORD_FILE, json.dumps(record, indent=1).encode())
    return record


def open_index(collection: Collection) -> tuple[faiss.Index, dict]:
    """(the memory-mapped index of `collection`'s folder with its tuned breadth, its record); a UserError naming the
    folder and the fix when it is missing, damaged, or built from another extraction."""
    folder = collection.folder
    raw = read_verified(folder / RECORD_FILE)
    if raw is None or not (folder / INDEX_FILE).is_file():
        raise UserError(f"{folder} has no usable {INDEX_FILE}; build it with python -m dinotwins.index {folder}")
    record = json.loads(raw)
    if record.get("extraction") != collection.manifest.extraction:
        raise UserError(f"the index in {folder} was built from another extraction (another model or data); rebuild "
                        f"it with python -m dinotwins.index {folder}")
    try:
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise UserError(f"{folder / INDEX_FILE} cannot be read ({str(exc).splitlines()[0][:80]}); rebuild it with "
                        f"python -m dinotwins.index {folder}") from None
    if index.ntotal != len(collection) or index.d != collection.dim:
        raise UserError(f"{folder / INDEX_FILE} holds {index.ntotal} vectors of {index.d} dimensions where the "
                        f"extraction has {len(collection)} of {collection.dim}; rebuild it")
    set_breadth(index, record["nprobe"])
    return index, record


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m dinotwins.index", description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, metavar="DIR", help="an extraction folder (python -m dinotwins.extract)")
    p.add_argument("--memory-gb", type=float, default=MEMORY_GB,
                   help=f"memory the searching process may give the vectors (default {MEMORY_GB})")
    p.add_argument("--recall", type=float, default=RECALL, help=f"recall@10 target (default {RECALL})")
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: its default)")
    try:
        args = p.parse_args(argv)
        if not 0 < args.recall <= 1:
            raise UserError(f"--recall must be in (0, 1], got {args.recall}")
        if args.threads:
            faiss.omp_set_num_threads(args.threads)
        record = build_index(Collection(args.folder, full_check=True), args.memory_gb, args.recall)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0
