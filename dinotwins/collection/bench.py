"""`python -m dinotwins.bench --retrieval DIR`: what searching an extraction folder's index costs and finds.

Opens the collection (shards memory-mapped) and its index as the explorer does, then, on `QUERIES` collection
vectors drawn with another seed than the index's tuning queries: the latency of one query at a time (top 10,
median and 90th percentile, after a warm-up), recall@10 against exact search (each query's own vector left out of
both lists), and this process's resident memory. The build time and the index's choice come from its record.
"""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import numpy as np

from dinotwins.collection.index import K, exact_neighbours, open_index, recall_at_k
from dinotwins.collection.shards import Collection
from dinotwins.evaluation.knn import l2_normalize

QUERIES = 500


def bench_retrieval(folder: Path, queries: int = QUERIES, seed: int = 1) -> dict:
    start = time.perf_counter()
    collection = Collection(folder)
    index, record = open_index(collection)
    open_s = time.perf_counter() - start
    own = np.sort(np.random.default_rng(seed).choice(len(collection), min(queries, len(collection)), replace=False))
    vectors = l2_normalize(collection.take(own))
    for row in vectors[:20]:  # warm-up: the first queries page the mapped lists in
        index.search(row[None], K + 1)
    times, found = [], []
    for row in vectors:
        tick = time.perf_counter()
        found.append(index.search(row[None], K + 1)[1][0])
        times.append(time.perf_counter() - tick)
    times.sort()
    truth = exact_neighbours(collection, vectors, K + 1)
    return {"num_vectors": len(collection), "dim": collection.dim, "factory": record["factory"],
            "nprobe": record["nprobe"], "build_s": record["build_s"], "index_bytes": record["index_bytes"],
            "open_s": round(open_s, 3), "queries": len(own),
            "query_p50_ms": round(1000 * statistics.median(times), 3),
            "query_p90_ms": round(1000 * times[int(0.9 * (len(times) - 1))], 3),
            "recall_at_10": round(recall_at_k(np.stack(found), truth, own), 4),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
