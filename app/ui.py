"""The Gradio Blocks: `build_app(models, gallery) -> gr.Blocks`, and the launch settings (`launch_options`).

Layout: a query panel (upload, or click an example: scikit-image photos and gallery images) above four tabs,
Attention, Retrieval, Embeddings, Runs. The handlers (`attention_handler`, `retrieve_handler`,
`projection_handler`) are plain functions of an `Explorer` and plain values, tested without a server; inside
`build_app` they are bound to the app's Explorer and their UserErrors become gr.Errors.

API (gradio_client): `/attention` (image[, keep_mass]), `/retrieve` (image[, k, query_index, query_class]),
`/projection` (no inputs). Image events run with `preprocess=False`: gradio only stores and validates the
upload (size limit, path inside its upload folder) and `app.images.load_image` does every decoding step, so
bad files get one clear `gr.Error` and the server keeps serving.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from app import attention_tab, runs
from app.cache import ArtifactCache
from app.examples import example_queries
from app.explorer import Explorer, Progress, no_progress
from app.gallery import Gallery
from app.images import MAX_FILE_BYTES, harden_pil, load_image
from app.models import ModelEntry
from app.projection import projection_figure, score_title
from app.retrieval import DEFAULT_K, overlap_matrix, summary, thumbnails
from dinotwins.errors import UserError

UNKNOWN_CLASS = "unknown"
# Small gallery images (28-32 px) fill the query box, and neighbour thumbnails keep their pixels crisp.
CSS = ("#query img { width: 100%; height: 100%; object-fit: contain; } "
       "[id^=neighbours-] img { image-rendering: pixelated; }")
INTRO = ("# DinoTwins Explorer\n"
         "Compare what self-supervised ViTs attend to, which gallery images they find similar, and how they lay "
         "out the gallery. Upload an image (or click an example), then open a tab.")


def launch_options(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch`: local by default, bounded uploads, no extra served paths."""
    return dict(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_BYTES,
                allowed_paths=None, show_error=False, ssr_mode=False, footer_links=["api"], css=CSS)


def read_query(value: Any) -> Image.Image | None:
    """A query as a handler gets it - a gr.Image FileData dict (gradio's preprocessing is off), a path, a PIL
    image, an array, or None - as an RGB PIL image (or None), through the safe loader."""
    if value is None:
        return None
    if isinstance(value, (Image.Image, np.ndarray)):
        return load_image(value)
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return None
    name = value.get("orig_name") if isinstance(value, dict) else None
    return load_image(Path(path), name=name or Path(path).name)


# --------------------------------------------------------------------------------------------- handlers
def attention_handler(explorer: Explorer, image: Any, keep_mass: float | None = attention_tab.DEFAULT_KEEP_MASS
                      ) -> list:
    """[one row image per model, the shared colour scale, entropy rows]."""
    picture = read_query(image)
    if picture is None:
        raise UserError("no image: upload one or click an example")
    keep = float(attention_tab.DEFAULT_KEEP_MASS if keep_mass is None else keep_mass)
    if not 0.0 < keep <= 1.0:
        raise UserError(f"keep_mass must be in (0, 1], got {keep}")
    rows, bar, entropy = attention_tab.attention_view(explorer.entries, picture, keep)
    return [*rows, bar, entropy]


def retrieve_handler(explorer: Explorer, image: Any, k: int | None = DEFAULT_K, query_index: int | None = -1,
                     query_class: str | None = UNKNOWN_CLASS, progress: Progress = no_progress) -> list:
    """[summary markdown, (image, caption) list per model, Jaccard overlap rows]. query_index >= 0 queries
    with that gallery image (its label, itself left out); else the uploaded image, labelled by query_class."""
    gallery = explorer.gallery
    k = int(DEFAULT_K if k is None else k)
    if not 1 <= k <= len(gallery) - 1:
        raise UserError(f"k must be between 1 and {len(gallery) - 1}, got {k}")
    index = -1 if query_index in (None, "") else int(query_index)
    if index >= len(gallery):
        raise UserError(f"query_index {index} is outside the gallery (0..{len(gallery) - 1}); use -1 for the "
                        f"uploaded image")
    classes = gallery.class_names()
    if index >= 0:
        picture, label = None, None
        label_name = gallery.label_name(index) if gallery.labelled else None
    else:
        index, picture = None, read_query(image)
        if picture is None:
            raise UserError("no image: upload one, click an example, or give a gallery index")
        label_name = None if query_class in (None, "", UNKNOWN_CLASS) else str(query_class)
        if label_name is not None and label_name not in classes:
            raise UserError(f"unknown class {label_name!r}; use one of {', '.join(classes) or 'none'}")
        label = None if label_name is None else classes.index(label_name)
    results = explorer.neighbours(picture, k, query_index=index, query_label=label, progress=progress)
    return [summary(results, k, label_name), *[thumbnails(gallery, r) for r in results], overlap_matrix(results)]


def projection_handler(explorer: Explorer, progress: Progress = no_progress) -> tuple[Any, str]:
    """(plotly figure of the aligned UMAP panels, markdown table of k-NN accuracy and silhouette)."""
    result = explorer.projection(progress=progress)
    gallery = explorer.gallery
    titles = [score_title(m, knn, sil) for m, knn, sil in zip(explorer.labels, result.knn, result.silhouette)]
    labels = None if gallery.labels is None else gallery.labels[result.indices]
    figure = projection_figure(explorer.labels, result.layouts, result.indices, labels, gallery.classes, titles)
    table = ["| model | 20-NN accuracy (leave-one-out, whole gallery) | silhouette (cosine, subsample) |",
             "|---|---|---|"]
    for model, knn, sil in zip(explorer.labels, result.knn, result.silhouette):
        knn_text = "n/a" if knn is None else f"{knn:.2%}"
        table.append(f"| {model} | {knn_text} | {'n/a' if sil is None else f'{sil:.3f}'} |")
    return figure, "\n".join(table)


def _user_errors_as_gr_errors(fn):
    """Let a handler's UserError reach the browser as a gr.Error (shown as a toast, one line)."""
    @functools.wraps(fn)  # keeps the signature gradio reads (defaults, gr.Progress)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


def atomic_gradio_image_cache() -> None:
    """Make gradio write output images atomically, process-wide (idempotent).

    gradio's `save_pil_to_cache` names each output image by the hash of its bytes and rewrites that file in place
    whenever a request produces the same image again (the same neighbour thumbnail, say), so a download of it
    running at that moment reads a half-written file (seen with 20 concurrent /retrieve calls). This version
    writes a new file through a temporary name in the same folder and `os.replace`, and reuses an existing one,
    touching it because delete_cache ages files by ctime."""
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img: Image.Image, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        path = (folder / f"{name}.{format}").resolve()
        if path.is_file():
            try:
                os.utime(path)
            except OSError:
                pass
            return str(path)
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(staging, 0o644)
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(path)

    save_pil_to_cache.atomic = True  # type: ignore[attr-defined]
    processing_utils.save_pil_to_cache = save_pil_to_cache


def build_app(models: list[ModelEntry], gallery: Gallery, *, cache: ArtifactCache | None = None,
              notice: str = "", umap_epochs: int | None = None, umap_points: int | None = None) -> gr.Blocks:
    """The whole explorer for these models and this gallery (nothing is launched here)."""
    harden_pil()
    atomic_gradio_image_cache()
    explorer = Explorer(models, gallery, cache or ArtifactCache(), umap_epochs=umap_epochs,
                        **({"umap_points": umap_points} if umap_points else {}))
    examples = example_queries(gallery)
    classes = gallery.class_names()
    default_k = min(DEFAULT_K, len(gallery) - 1)

    # Thin gradio-facing wrappers: their signatures are what the API documents (defaults = optional inputs).
    @_user_errors_as_gr_errors
    def attention(image, keep_mass=attention_tab.DEFAULT_KEEP_MASS):
        """Last-layer CLS attention of every model on one image, on one shared colour scale.

        Parameters:
            image: the query image (PNG, JPEG, WebP, GIF, BMP or TIFF)
            keep_mass: share of the attention mass the mask keeps, in (0, 1]
        Returns:
            one row image per model (input, each head, mean, mask), the colour scale, entropy (bits) per head
        """
        return attention_handler(explorer, image, keep_mass)

    @_user_errors_as_gr_errors
    def retrieve(image, k=default_k, query_index=-1, query_class=UNKNOWN_CLASS, progress=gr.Progress()):
        """Each model's top-k gallery neighbours (cosine), precision@k, and how much the models' lists overlap.

        Parameters:
            image: the query image (ignored when query_index >= 0)
            k: neighbours per model
            query_index: a gallery index to query with that gallery image (itself left out), -1 for the image
            query_class: the uploaded image's class, to score precision@k ("unknown": n/a)
        Returns:
            summary (markdown), one gallery of (image, "label · cosine · #index") per model, Jaccard overlaps
        """
        return retrieve_handler(explorer, image, k, query_index, query_class, progress)

    @_user_errors_as_gr_errors
    def projection(progress=gr.Progress()):
        """2-D UMAP of the gallery per model, aligned to the first model, with k-NN accuracy and silhouette.

        Returns:
            plotly figure, scores table (markdown)
        """
        return projection_handler(explorer, progress)

    def pick_example(selection: gr.SelectData):
        example = examples[selection.index]
        if example.gallery_index is None:
            return example.image, -1, UNKNOWN_CLASS
        label = gallery.label_name(example.gallery_index) if gallery.labelled else UNKNOWN_CLASS
        return example.image, example.gallery_index, label

    def forget_gallery_index():
        return -1, UNKNOWN_CLASS

    # ----------------------------------------------------------------------------------------- layout
    # delete_cache: every 30 min, drop uploads and rendered maps older than an hour from gradio's cache folder
    with gr.Blocks(title="DinoTwins Explorer", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        if notice:
            gr.Markdown(f"> **Note.** {notice}", elem_id="notice")
        with gr.Row():
            query = gr.Image(label="Query image", type="filepath", image_mode=None, format="png",
                             sources=["upload", "clipboard"], height=280, elem_id="query")
            with gr.Column(scale=2):
                picker = gr.Gallery(value=[(e.image, e.caption) for e in examples], label="Examples: click one",
                                    columns=9, height=220, allow_preview=False, object_fit="contain",
                                    interactive=False, elem_id="examples")
                with gr.Row():
                    query_index = gr.Number(value=-1, precision=0, minimum=-1, maximum=len(gallery) - 1,
                                            label="Gallery index of the query (-1: the uploaded image)")
                    query_class = gr.Dropdown([UNKNOWN_CLASS, *classes], value=UNKNOWN_CLASS,
                                              label="Class of an uploaded query (for precision@k)")
        with gr.Tabs():
            with gr.Tab("Attention", id="attention"):
                with gr.Row():
                    keep_mass = gr.Slider(0.05, 1.0, value=attention_tab.DEFAULT_KEEP_MASS, step=0.05,
                                          label="Mask keeps this share of the attention mass (DINO: 60%)")
                    attention_button = gr.Button("Show attention", variant="primary")
                gr.Markdown("Heat maps: last-layer CLS attention per head, then the mean over heads, then the "
                            "mask of the mean. One colour scale for every map of every model, in units of "
                            "uniform attention (1x = every patch equal). H = entropy in bits.")
                scale = gr.Image(label="Shared colour scale (x uniform attention)", interactive=False,
                                 height=60, format="png", elem_id="attention-scale")
                attention_rows = [gr.Image(label=e.label, interactive=False, format="png",
                                           elem_id=f"attention-row-{i}") for i, e in enumerate(models)]
                entropy = gr.Dataframe(label="Attention entropy (bits) per head", interactive=False,
                                       headers=attention_tab.entropy_headers(attention_tab.most_heads(models)))
            with gr.Tab("Retrieval", id="retrieval"):
                with gr.Row():
                    k = gr.Slider(1, min(50, len(gallery) - 1), value=default_k, step=1,
                                  label="k neighbours")
                    retrieve_button = gr.Button("Find neighbours", variant="primary")
                retrieval_summary = gr.Markdown(label="Retrieval summary", elem_id="retrieval-summary")
                neighbour_views = [gr.Gallery(label=f"{e.label}: top-k (label · cosine · #index)", columns=10,
                                              height=170, allow_preview=False, object_fit="contain", format="png",
                                              interactive=False, elem_id=f"neighbours-{i}")
                                   for i, e in enumerate(models)]
                overlap = gr.Dataframe(label="Overlap of the models' top-k sets (Jaccard)", interactive=False,
                                       headers=["model", *explorer.labels])
            with gr.Tab("Embeddings", id="embeddings") as embeddings_tab:
                projection_button = gr.Button("Show / refresh the projection")
                projection_plot = gr.Plot(label="UMAP of the gallery, aligned across models", elem_id="projection")
                projection_scores = gr.Markdown(label="Projection scores")
            with gr.Tab("Runs", id="runs"):
                with gr.Row():
                    for entry in models:
                        gr.Markdown(runs.run_card(entry))
                gr.Plot(value=runs.curves_figure(models), label="Training curves")

        # ------------------------------------------------------------------------------------- events
        attention_io = dict(fn=attention, inputs=[query, keep_mass], outputs=[*attention_rows, scale, entropy],
                            preprocess=False)
        retrieve_io = dict(fn=retrieve, inputs=[query, k, query_index, query_class],
                           outputs=[retrieval_summary, *neighbour_views, overlap], preprocess=False)
        gr.on([attention_button.click, keep_mass.release], api_name="attention", **attention_io)
        gr.on([retrieve_button.click, k.release, query_index.submit, query_class.input], api_name="retrieve",
              **retrieve_io)
        gr.on([projection_button.click, embeddings_tab.select], fn=projection, inputs=None,
              outputs=[projection_plot, projection_scores], api_name="projection")
        (query.upload(forget_gallery_index, None, [query_index, query_class], api_visibility="private")
         .then(api_visibility="private", **attention_io).then(api_visibility="private", **retrieve_io))
        (picker.select(pick_example, None, [query, query_index, query_class], api_visibility="private")
         .then(api_visibility="private", **attention_io).then(api_visibility="private", **retrieve_io))
    return demo
