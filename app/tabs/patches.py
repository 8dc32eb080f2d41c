"""Patches tab: what the models' last-layer patch tokens say, per patch.

- **Patch similarity**: click a patch of the query; for each model, the cosine similarity of that patch's token
  to every patch of the same image and of the model's top retrieved gallery image (the query left out when it is
  a gallery image), as heat maps on one shared scale (cosine, -1 to 1 clipped at the largest value shown).
- **Patch-feature PCA as RGB** (the DINOv2 picture): per model, a PCA of the patch tokens of the query (and,
  optionally, of its 3 nearest gallery images, fitted jointly); the first component, scaled to [0, 1] and
  oriented so that the larger side is background, is cut at one half into foreground; a second PCA of the
  foreground tokens gives three components shown as red, green and blue (each scaled to [0, 1] over the images),
  the background black.

Tokens come from `LoadedModel.patch_tokens` (after the final norm) with the model run at `scale` times its
training size, as in the Attention tab, in the dtype the embeddings are computed in (`feature_dtype`: bf16
autocast where the CPU does bf16 fast, `feature_autocast`; tokens within 1e-5 cosine of fp32's on the demo
models). The click is a point in [0, 1]^2 of the square query, so models with different patch grids each take
their own patch under it. The export button writes both views as one PNG and their numbers (every similarity map,
every PCA picture's colours and foreground) as JSON.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageDraw

from app import exports, render
from app.images import read_query
from app.tabs.attention import DEFAULT_SCALE, SCALES
from app.tabs.base import TabContext, gradio_errors
from dinotwins.errors import UserError
from dinotwins.evaluation.features import feature_autocast

TITLE, ID = "Patches", "patches"
CLICK_SIZE = 256  # px of the square query shown for clicking
PCA_NEIGHBOURS = 3


def tokens_of(model, images: list[Image.Image], scale: float, inputs: dict | None = None) -> np.ndarray:
    """(len(images), h, w, D) float32 L2-normalized last-layer patch tokens. `inputs`: a dict shared by the
    models of one view (while its images live), so an image is preprocessed once per input size and
    normalization, not once per model."""
    size = model.input_size(scale)
    inputs = {} if inputs is None else inputs
    batch = []
    for image in images:
        key = (id(image), size, tuple(model.mean), tuple(model.std), str(model.device))
        if key not in inputs:
            inputs[key] = model.preprocess([image], size)
        batch.append(inputs[key])
    with feature_autocast(model):
        tokens = model.patch_tokens(torch.cat(batch)).float().cpu().numpy()
    return tokens / np.maximum(np.linalg.norm(tokens, axis=-1, keepdims=True), 1e-12)


def _patch_at(grid: tuple[int, int], x: float, y: float) -> tuple[int, int]:
    h, w = grid
    return min(int(y * h), h - 1), min(int(x * w), w - 1)


def similarity_maps(explorer, picture: Image.Image, x: float, y: float, scale: float,
                    query_index: int | None = None) -> list[dict[str, Any]]:
    """Per model: {'model', 'patch' (row, col), 'query' (h, w) cosine map, 'neighbour' (h, w) cosine map of its
    top-1 gallery image, 'neighbour_index'}."""
    results = explorer.neighbours(None if query_index is not None else picture, 1, query_index=query_index)
    out, inputs, shown = [], {}, {}
    for entry, found in zip(explorer.entries, results):
        index = int(found.indices[0])
        neighbour = _image(explorer, index, shown)
        tokens = tokens_of(entry.model, [picture, neighbour], scale, inputs)  # (2, h, w, D)
        row, col = _patch_at(tokens.shape[1:3], x, y)
        chosen = tokens[0, row, col]  # (D,)
        out.append({"model": entry.label, "patch": (row, col), "query": tokens[0] @ chosen,
                    "neighbour": tokens[1] @ chosen, "neighbour_index": index})
    return out


def _image(explorer, index: int, shown: dict) -> Image.Image:
    """Gallery image `index`, decoded once per view (`shown`), so the models share its preprocessed input."""
    if index not in shown:
        shown[index] = explorer.gallery.image(index)
    return shown[index]


def _square(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB").resize((render.TILE, render.TILE), Image.Resampling.BICUBIC),
                      dtype=np.float32)


def _marked(base: np.ndarray, grid: tuple[int, int], patch: tuple[int, int]) -> np.ndarray:
    """`base` with the chosen patch outlined."""
    image = Image.fromarray(base.astype(np.uint8))
    h, w = grid
    size = image.width
    top, left = patch[0] * size / h, patch[1] * size / w
    ImageDraw.Draw(image).rectangle([left, top, left + size / w - 1, top + size / h - 1], outline=(0, 255, 255),
                                    width=2)
    return np.asarray(image)


def similarity_view(explorer, picture: Image.Image, maps: list[dict[str, Any]]
                    ) -> tuple[list[Image.Image], Image.Image]:
    """(one row image per model: [query with the patch | similarity over it | top-1 neighbour | similarity over
    it], the shared colour bar) of `similarity_maps`' maps."""
    vmax = max(max(float(m["query"].max()), float(m["neighbour"].max())) for m in maps)
    vmin = min(min(float(m["query"].min()), float(m["neighbour"].min())) for m in maps)
    query = _square(picture)
    rows = []
    for m in maps:
        neighbour = _square(explorer.gallery.image(m["neighbour_index"]))
        label = explorer.gallery.label_name(m["neighbour_index"])
        rows.append(render.tile_row([
            (_marked(query, m["query"].shape, m["patch"]), f"{m['model']} · patch {m['patch']}"),
            (render.overlay(query, m["query"], vmin, vmax), "this image"),
            (neighbour.astype(np.uint8), f"top-1 #{m['neighbour_index']} {label}"[:24]),
            (render.overlay(neighbour, m["neighbour"], vmin, vmax), "top-1: similarity")]))
    return rows, render.colorbar(vmin, vmax, unit="")


def pca_rgb(token_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images, h, w, D) tokens -> ((images, h, w, 3) RGB in [0, 1], (images, h, w) bool foreground); see the
    module docstring."""
    n, h, w, d = token_sets.shape
    flat = token_sets.reshape(-1, d).astype(np.float32)
    first = _components(flat, 1)[:, 0]
    first = (first - first.min()) / max(first.max() - first.min(), 1e-12)
    foreground = first > 0.5
    if foreground.mean() > 0.5:  # orient: the larger side is background
        foreground = ~foreground
    rgb = np.zeros((len(flat), 3))
    if foreground.sum() >= 4:
        colours = _components(flat[foreground], 3)
        low, high = colours.min(axis=0), colours.max(axis=0)
        rgb[foreground] = (colours - low) / np.maximum(high - low, 1e-12)
    return rgb.reshape(n, h, w, 3), foreground.reshape(n, h, w)


def _components(x: np.ndarray, k: int) -> np.ndarray:
    """Projections of the rows of x on their first k principal components (fewer columns padded with zeros), each
    signed so its largest loading is positive. From the eigenvectors of the D x D covariance, not an SVD of the
    N x D tokens, and in torch, not numpy: numpy's BLAS threads and torch's, alternating in one process, wait on
    each other (a 192 x 192 numpy eigh right after a model's forward took 100 ms instead of 5 here)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    centred = t - t.mean(dim=0, keepdim=True)
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    top = vectors[:, -min(k, len(x), x.shape[1]):].flip(1)
    top = top * torch.sign(top[top.abs().argmax(dim=0), torch.arange(top.shape[1])])
    out = (centred @ top).numpy()
    return np.pad(out, ((0, 0), (0, k - out.shape[1])))


def pca_maps(explorer, picture: Image.Image, with_neighbours: bool, scale: float,
             query_index: int | None = None) -> list[dict[str, Any]]:
    """Per model: {'model', 'neighbour_indices' (the gallery images fitted with the query), 'images' (the query,
    then those), 'rgb' (images, h, w, 3) in [0, 1], 'foreground' (images, h, w) bool}."""
    found = explorer.neighbours(None if query_index is not None else picture, PCA_NEIGHBOURS,
                                query_index=query_index) if with_neighbours else []
    neighbour_ids = [[int(i) for i in r.indices] for r in found] or [[] for _ in explorer.entries]
    out, inputs, shown = [], {}, {}  # each image decoded and preprocessed once for all models
    for entry, ids in zip(explorer.entries, neighbour_ids):
        images = [picture] + [_image(explorer, i, shown) for i in ids]
        rgb, foreground = pca_rgb(tokens_of(entry.model, images, scale, inputs))
        out.append({"model": entry.label, "neighbour_indices": ids, "images": images, "rgb": rgb,
                    "foreground": foreground})
    return out


def pca_view(explorer, maps: list[dict[str, Any]]) -> list[Image.Image]:
    """One row image per model of `pca_maps`' maps: [input | its PCA picture | (the neighbours and theirs)]."""
    rows = []
    for m in maps:
        ids, tiles = m["neighbour_indices"], []
        for k, image in enumerate(m["images"]):
            caption = m["model"] if k == 0 else f"#{ids[k - 1]} {explorer.gallery.label_name(ids[k - 1])}"
            tiles.append((_square(image).astype(np.uint8), caption[:24]))
            tiles.append(((render.upsample(m["rgb"][k], render.TILE) * 255).astype(np.uint8),
                          f"PCA · fg {m['foreground'][k].mean():.0%}"))
        rows.append(render.tile_row(tiles))
    return rows


def _checked(image: Any, scale: float | None) -> tuple[Image.Image, float]:
    picture = read_query(image)
    if picture is None:
        raise UserError("no image: upload one or click an example")
    scale = float(DEFAULT_SCALE if scale is None else scale)
    if not 0.25 <= scale <= 4.0:
        raise UserError(f"scale must be between 0.25 and 4 (times the training size), got {scale}")
    return picture, scale


def patch_similarity_handler(explorer, image: Any, x: float | None = 0.5, y: float | None = 0.5,
                             scale: float | None = DEFAULT_SCALE, query_index: int | None = -1) -> list:
    """[one row image per model, the colour bar]; (x, y) in [0, 1] picks the patch (0, 0 = top left)."""
    picture, scale = _checked(image, scale)
    x, y = _point(x, y)
    maps = similarity_maps(explorer, picture, x, y, scale, _gallery_index(query_index))
    rows, bar = similarity_view(explorer, picture, maps)
    return [*rows, bar]


def patch_pca_handler(explorer, image: Any, with_neighbours: bool | None = True,
                      scale: float | None = DEFAULT_SCALE, query_index: int | None = -1) -> list:
    """[one row image per model]."""
    picture, scale = _checked(image, scale)
    return pca_view(explorer, pca_maps(explorer, picture, bool(with_neighbours), scale, _gallery_index(query_index)))


def patches_export(explorer, image: Any, x: float | None = 0.5, y: float | None = 0.5,
                   with_neighbours: bool | None = True, scale: float | None = DEFAULT_SCALE,
                   query_index: int | None = -1) -> list[str]:
    """[PNG of both views (the colour bar, the similarity rows, the PCA rows), JSON of the numbers behind them:
    each model's similarity maps and its PCA colours and foreground per image] as file paths."""
    picture, scale = _checked(image, scale)
    x, y = _point(x, y)
    index = _gallery_index(query_index)
    similarity = similarity_maps(explorer, picture, x, y, scale, index)
    pca = pca_maps(explorer, picture, bool(with_neighbours), scale, index)
    rows, bar = similarity_view(explorer, picture, similarity)
    folder = exports.export_folder()
    picture_path = exports.write_png(folder, "patches", render.stack([bar, *rows, *pca_view(explorer, pca)]))
    numbers = {"scale": scale, "point": [x, y], "query_index": index, "units": "cosine similarity",
               "similarity": [{"model": m["model"], "patch": list(m["patch"]),
                               "query": m["query"].round(5).tolist(), "neighbour_index": m["neighbour_index"],
                               "neighbour": m["neighbour"].round(5).tolist()} for m in similarity],
               "pca": [{"model": m["model"], "neighbour_indices": m["neighbour_indices"],
                        "rgb": m["rgb"].round(4).tolist(), "foreground": m["foreground"].tolist()} for m in pca]}
    return [picture_path, exports.write_json(folder, "patches", numbers)]


def _point(x: float | None, y: float | None) -> tuple[float, float]:
    x, y = float(0.5 if x is None else x), float(0.5 if y is None else y)
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise UserError(f"x and y are fractions of the image's width and height in [0, 1], got ({x}, {y})")
    return x, y


def _gallery_index(query_index: int | None) -> int | None:
    return None if query_index in (None, "") or int(query_index) < 0 else int(query_index)


def build(ctx: TabContext, tab: gr.Tab) -> list[dict]:
    explorer = ctx.explorer

    @gradio_errors
    def patch_similarity(image, x=0.5, y=0.5, scale=DEFAULT_SCALE, query_index=-1):
        """Cosine similarity of one patch's last-layer token to every patch of the image and of each model's
        top-1 gallery neighbour, on one shared scale.

        Parameters:
            image: the query image
            x: the patch's horizontal position, a fraction of the width in [0, 1]
            y: the patch's vertical position, a fraction of the height in [0, 1]
            scale: run each model at this multiple of its training size
            query_index: the query's gallery index (left out of its own neighbours), -1 for an upload
        Returns:
            one row image per model, the colour scale
        """
        return patch_similarity_handler(explorer, image, x, y, scale, query_index)

    @gradio_errors
    def patch_pca(image, with_neighbours=True, scale=DEFAULT_SCALE, query_index=-1):
        """Each model's patch tokens as RGB: PCA, first component as foreground, next three as colour.

        Parameters:
            image: the query image
            with_neighbours: fit the PCA jointly with the query's 3 nearest gallery images (and show them)
            scale: run each model at this multiple of its training size
            query_index: the query's gallery index (left out of its own neighbours), -1 for an upload
        Returns:
            one row image per model
        """
        return patch_pca_handler(explorer, image, with_neighbours, scale, query_index)

    def show_query(image):
        picture = read_query(image)
        return None if picture is None else picture.resize((CLICK_SIZE, CLICK_SIZE), Image.Resampling.BICUBIC)

    def clicked(image, scale, query_index, selection: gr.SelectData):
        x, y = (v / CLICK_SIZE for v in selection.index)
        return [x, y, *patch_similarity(image, x, y, scale, query_index)]

    with gr.Row():
        click = gr.Image(label="Click a patch of the query", interactive=False, height=CLICK_SIZE,
                         width=CLICK_SIZE, format="png", elem_id="patch-click")
        with gr.Column():
            scale = gr.Radio(list(SCALES), value=DEFAULT_SCALE, label="Input size (x each model's training size)")
            with gr.Row():
                x = gr.Number(value=0.5, minimum=0, maximum=1, label="patch x (0-1)")
                y = gr.Number(value=0.5, minimum=0, maximum=1, label="patch y (0-1)")
            similarity_button = gr.Button("Patch similarity", variant="primary")
            with_neighbours = gr.Checkbox(value=True, label=f"PCA with the {PCA_NEIGHBOURS} nearest gallery images")
            pca_button = gr.Button("Patch PCA as RGB")
    gr.Markdown("**Patch similarity**: each row is a model: the query with the chosen patch, the cosine similarity "
                "of that patch's token to every patch of the query, the model's top-1 gallery neighbour, and the "
                "similarity to its patches. One colour scale for every map.")
    bar = gr.Image(label="Shared colour scale (cosine)", interactive=False, height=60, format="png")
    similarity_rows = [gr.Image(label=e.label, interactive=False, format="png", elem_id=f"similarity-row-{i}")
                       for i, e in enumerate(ctx.entries)]
    gr.Markdown("**Patch PCA**: foreground = the first principal component's larger values; colour = the next "
                "three components of the foreground tokens.")
    pca_rows = [gr.Image(label=e.label, interactive=False, format="png", elem_id=f"pca-row-{i}")
                for i, e in enumerate(ctx.entries)]
    with gr.Row():
        export_button = gr.Button("Export both views (PNG + JSON)", size="sm")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=80)

    similarity_io = dict(fn=patch_similarity, inputs=[ctx.query, x, y, scale, ctx.query_index],
                         outputs=[*similarity_rows, bar], preprocess=False)
    pca_io = dict(fn=patch_pca, inputs=[ctx.query, with_neighbours, scale, ctx.query_index], outputs=pca_rows,
                  preprocess=False)
    gr.on([similarity_button.click], api_name="patch_similarity", **similarity_io)
    gr.on([pca_button.click, with_neighbours.input], api_name="patch_pca", **pca_io)
    export_button.click(gradio_errors(lambda *values: patches_export(explorer, *values)),
                        [ctx.query, x, y, with_neighbours, scale, ctx.query_index], files, preprocess=False,
                        api_visibility="private")
    click.select(clicked, [ctx.query, scale, ctx.query_index], [x, y, *similarity_rows, bar], preprocess=False,
                 api_visibility="private")
    return [dict(fn=show_query, inputs=[ctx.query], outputs=[click], preprocess=False)]
