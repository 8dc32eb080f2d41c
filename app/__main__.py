"""`python -m app [MODEL ...] [--gallery SPEC] [--host 127.0.0.1] [--port 7860] [--share]`.

MODEL: anything `dinotwins.load_model` takes (run dir, exported .safetensors, official DINO .pth), mixed freely.
No MODEL: a demo set under assets/models/ (`--demo scenes`, the default, or `--demo fashion-mnist`), or
smoke-trained stand-ins (with a notice in the app).
No --gallery: the test split of the data the first model trained on, else scenes, else synthetic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinotwins.cli import OneLineParser
from dinotwins.data import SPEC_SYNTAX
from dinotwins.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m app", description="DinoTwins Explorer: attention, retrieval and "
                      "embeddings of self-supervised ViTs, side by side.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="run dir, exported .safetensors or official DINO .pth (default: the demo models)")
    p.add_argument("--gallery", metavar="SPEC", help=f"{SPEC_SYNTAX} (default: the test split of the data the first "
                   "model trained on, else scenes, else synthetic)")
    p.add_argument("--demo", default="scenes", choices=("scenes", "fashion-mnist"),
                   help="with no MODEL, the demo set shipped under assets/models/ (default scenes)")
    p.add_argument("--index", nargs="+", metavar="DIR",
                   help="prebuilt collections (python -m dinotwins.extract, then python -m dinotwins.index), one per "
                        "MODEL in order, memory-mapped: the gallery is theirs; MODEL may then be left out")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--cache-dir", help="cache of embeddings/indexes/layouts (default $DINOTWINS_CACHE or "
                   "~/.cache/dinotwins/app)")
    p.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for spec in args.models:  # the cheap check first: no torch import to learn of a typo
            if not Path(spec).expanduser().exists():
                raise UserError(f"model {spec} does not exist; pass a run directory, a .safetensors or a .pth file")
        from app.cache import ArtifactCache  # heavy imports after the cheap argument checks
        from app.models import open_models_and_gallery
        from app.ui import build_app, launch_options

        cache = ArtifactCache(Path(args.cache_dir).expanduser() if args.cache_dir else None)
        entries, gallery, notices, collections = open_models_and_gallery(
            args.models, args.gallery, cache_root=cache.root, demo=args.demo, device=args.device,
            collections=args.index)
        print(f"models: {', '.join(e.label for e in entries)}; gallery: {gallery.spec} ({len(gallery)} images); "
              f"cache: {cache.root}", flush=True)
        demo = build_app(entries, gallery, cache=cache, notice=" ".join(notices), collections=collections)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    demo.launch(**launch_options(args.host, args.port, args.share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
