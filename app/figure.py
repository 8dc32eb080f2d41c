"""The README's attention figure, drawn by the Attention tab's own code: `python -m app.figure [MODEL ...]`.

For each of scikit-image's first `PHOTOS` example photos: a title, then one row per model (input, every head's
last-layer CLS attention, the mean over heads, the 60 % mass mask), the models of one photo on one shared colour
scale (as in the app). Models are those `python -m app` would show (default: the scenes demo set).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from dinotwins.errors import UserError

PHOTOS = 5
DEFAULT_OUT = Path("docs/figures/scenes-attention.png")


def draw_figure(entries, photos: list[tuple[str, Image.Image]], keep_mass: float, scale: float) -> Image.Image:
    from app import render
    from app.tabs.attention import compute_maps, render_row, shared_scale

    blocks = []
    for name, image in photos:
        maps = compute_maps(entries, image, keep_mass, scale)
        vmin, vmax = shared_scale(maps)
        rows = [render_row(m, vmin, vmax) for m in maps]
        title = Image.new("RGB", (rows[0].width, 22), "white")
        labels = ", ".join(f"row {i + 1}: {e.label}" for i, e in enumerate(entries))
        ImageDraw.Draw(title).text((4, 4), f"{name} ({labels}; colour scale 0 to {vmax:.1f}x uniform and above)",
                                   fill="black", font=render.font(13))
        blocks.append(render.stack([title, *rows], gap=2))
    return render.stack(blocks, gap=12)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.figure", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", metavar="MODEL", help="as for python -m app (default: the demo set)")
    p.add_argument("--demo", default="scenes", help="with no MODEL, the shipped demo set (default scenes)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    p.add_argument("--scale", type=float, default=None, help="input size in multiples of the training size "
                   "(default: the Attention tab's default)")
    p.add_argument("--keep-mass", type=float, default=0.6)
    args = p.parse_args(argv)
    from app.cache import cache_root
    from app.examples import skimage_photos
    from app.images import load_image
    from app.models import ModelCache, default_model_specs
    from app.tabs.attention import DEFAULT_SCALE

    try:
        specs = args.models or default_model_specs(cache_root(), args.demo)[0]
        entries = ModelCache().entries(specs)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    photos = [(name, load_image(array, name)) for name, array in skimage_photos()[:PHOTOS]]
    figure = draw_figure(entries, photos, args.keep_mass, args.scale or DEFAULT_SCALE)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out} ({figure.width}x{figure.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
