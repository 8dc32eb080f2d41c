"""Benchmark of the app's handlers after warm-up: `python -m app.bench [MODEL ...] [--gallery SPEC]`.

Times what a user waits for, on `--threads` CPU threads (default 2, the target machine), every map at the app's
default input size (`DEFAULT_SCALE` x each model's training size):
- attention tab: decode an uploaded PNG + every model's maps, rendered (target < 0.3 s for 3 demo models);
- retrieval, per model: embed the query, FAISS search, neighbour thumbnails (target < 50 ms on a 10k gallery);
- patch similarity, all models: the clicked patch's token against the query's and each model's top-1 neighbour's
  patches, rendered (target < 0.3 s for 3 models);
- patch PCA, all models: the PCA picture of the query and its 3 nearest gallery images, rendered (< 0.3 s);
- cached projection: a fresh app state loading every model's layout and scores from the disk cache, and the
  plotly figure (target < 1 s).
First-time work (gallery embeddings, indexes, UMAP) is done, and timed, once before; it is not a target.
Not a test: numbers depend on the machine. Same models and gallery defaults as `python -m app`.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

TARGETS_S = {"attention tab (all models)": 0.3, "retrieval per model": 0.05, "patch similarity (all models)": 0.3,
             "patch PCA (all models)": 0.3, "cached projection": 1.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help="as for python -m app (default: the demo models)")
    p.add_argument("--demo", default="scenes", metavar="SET", help="as for python -m app (default: scenes)")
    p.add_argument("--gallery", metavar="SPEC", help="as for python -m app (default: as there)")
    p.add_argument("--index", nargs="+", metavar="DIR", help="as for python -m app: prebuilt collections")
    p.add_argument("--threads", type=int, default=2, help="torch and FAISS threads (default 2)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement, after 3 warm-up runs")
    p.add_argument("--cache-dir", type=Path, help="app cache (default $DINOTWINS_CACHE or ~/.cache/dinotwins/app)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return p


def timed(fn, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and 90th percentile seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_s": statistics.median(times), "p90_s": times[min(len(times) - 1, int(0.9 * len(times)))]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import faiss
    import skimage.data
    import torch
    from PIL import Image

    from app.cache import ArtifactCache
    from app.explorer import Explorer, Neighbours
    from dinotwins.evaluation.knn import search
    from app.images import load_image
    from app.models import open_models_and_gallery
    from app.tabs.attention import DEFAULT_SCALE, attention_view
    from app.tabs.embeddings import projection_figure
    from app.tabs.patches import pca_maps, pca_view, similarity_maps, similarity_view
    from app.tabs.retrieval import thumbnails
    from dinotwins.errors import UserError

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    try:
        cache = ArtifactCache(args.cache_dir)
        entries, gallery, notices, collections = open_models_and_gallery(
            args.models, args.gallery, cache_root=cache.root, demo=args.demo, collections=args.index)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in notices:
        print(f"note: {line}", file=sys.stderr)

    explorer = Explorer(entries, gallery, cache, collections=collections)
    first_time = time.perf_counter()
    explorer.prepare()
    explorer.projection()
    first_time = time.perf_counter() - first_time

    buf = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buf, "PNG")
    upload = buf.getvalue()
    query = load_image(upload)
    results: dict[str, dict[str, float]] = {}
    results["attention tab (all models)"] = timed(
        lambda: attention_view(entries, load_image(upload), 0.6), args.repeats)

    def retrieve_one(i: int) -> None:
        sims, ids = search(explorer.index(i), explorer.embed_images(i, [query]), 8)
        thumbnails(gallery, Neighbours(entries[i].label, ids[0], sims[0], None))

    per_model = [timed(lambda i=i: retrieve_one(i), args.repeats) for i in range(len(entries))]
    results["retrieval per model"] = {"median_s": max(r["median_s"] for r in per_model),
                                      "p90_s": max(r["p90_s"] for r in per_model)}
    def patch_similarity() -> None:
        picture = load_image(upload)
        similarity_view(explorer, picture, similarity_maps(explorer, picture, 0.5, 0.4, DEFAULT_SCALE))

    results["patch similarity (all models)"] = timed(patch_similarity, args.repeats)
    results["patch PCA (all models)"] = timed(
        lambda: pca_view(explorer, pca_maps(explorer, load_image(upload), True, DEFAULT_SCALE)), args.repeats)

    def cached_projection() -> None:
        fresh = Explorer(entries, gallery, cache, collections=collections)
        result = fresh.projection()
        projection_figure(fresh.labels, result.layouts, result.indices,
                                     None if gallery.labels is None else gallery.labels[result.indices],
                                     gallery.classes, fresh.labels).to_json()

    results["cached projection"] = timed(cached_projection, max(args.repeats // 4, 3), warmup=1)

    report = {"models": [e.label for e in entries], "gallery": f"{gallery.spec} ({len(gallery)} images)",
              "threads": args.threads, "first_time_work_s": round(first_time, 2),
              "results": {name: {k: round(v, 4) for k, v in r.items()} | {"target_s": TARGETS_S[name],
                                                                            "ok": r["median_s"] < TARGETS_S[name]}
                          for name, r in results.items()}}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"models: {', '.join(report['models'])}; gallery: {report['gallery']}; threads: {args.threads}; "
          f"first-time work (embeddings, indexes, UMAP, scores; 0 when cached): {first_time:.1f} s")
    print(f"{'measurement':30s} {'median':>9s} {'p90':>9s} {'target':>9s}")
    for name, r in report["results"].items():
        print(f"{name:30s} {r['median_s'] * 1000:7.1f}ms {r['p90_s'] * 1000:7.1f}ms {r['target_s'] * 1000:7.0f}ms "
              f"{'ok' if r['ok'] else 'SLOW'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
