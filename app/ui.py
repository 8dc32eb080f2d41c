"""The Gradio Blocks: `build_app(models, gallery) -> gr.Blocks`, and the launch settings (`launch_options`).

Layout: a query panel (upload, or click an example: scikit-image photos and gallery images) above the tabs of
`app.tabs.TABS`, each built by its own module (its handlers are plain functions, tested without a server). A
new query (an upload or a clicked example) runs every tab's query events in turn.

API (gradio_client): `/attention` (image[, keep_mass, scale]), `/retrieve` (image[, k, query_index,
query_class]), `/projection` (no inputs). Image events run with `preprocess=False`: gradio only stores and
validates the upload (size limit, path inside its upload folder) and `app.images.load_image` does every
decoding step, so bad files get one clear `gr.Error` and the server keeps serving.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.cache import ArtifactCache
from app.examples import example_queries
from app.explorer import Explorer
from app.gallery import Gallery
from app.gradio_patch import atomic_gradio_image_cache
from app.images import MAX_FILE_BYTES, harden_pil
from app.models import ModelEntry
from app.tabs import TABS
from app.tabs.base import UNKNOWN_CLASS, TabContext

CSS = "#query img { width: 100%; height: 100%; object-fit: contain; }"
INTRO = ("# DinoTwins Explorer\n"
         "Compare what self-supervised ViTs attend to, which gallery images they find similar, and how they lay "
         "out the gallery. Upload an image (or click an example), then open a tab.")


def launch_options(host: str = "127.0.0.1", port: int | None = 7860, share: bool = False) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch`: local by default, bounded uploads, no extra served paths."""
    return dict(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_BYTES,
                allowed_paths=None, show_error=False, ssr_mode=False, footer_links=["api"], css=CSS)


def build_app(models: list[ModelEntry], gallery: Gallery, *, cache: ArtifactCache | None = None,
              notice: str = "", umap_epochs: int | None = None, umap_points: int | None = None,
              collections: list | None = None) -> gr.Blocks:
    """The whole explorer for these models and this gallery (nothing is launched here); `collections`: one opened
    extraction per model, the gallery's prebuilt embeddings and indexes."""
    harden_pil()
    atomic_gradio_image_cache()
    explorer = Explorer(models, gallery, cache or ArtifactCache(), umap_epochs=umap_epochs, collections=collections,
                        **({"umap_points": umap_points} if umap_points else {}))
    examples = example_queries(gallery)

    def pick_example(selection: gr.SelectData):
        example = examples[selection.index]
        if example.gallery_index is None:
            return example.image, -1, UNKNOWN_CLASS
        label = gallery.label_name(example.gallery_index) if gallery.labelled else UNKNOWN_CLASS
        return example.image, example.gallery_index, label

    def forget_gallery_index():
        return -1, UNKNOWN_CLASS

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
                    query_class = gr.Dropdown([UNKNOWN_CLASS, *gallery.class_names()], value=UNKNOWN_CLASS,
                                              label="Class of an uploaded query (for precision@k)")
        ctx = TabContext(explorer, query, query_index, query_class)
        query_events: list[dict] = []
        with gr.Tabs():
            for module in TABS:
                with gr.Tab(module.TITLE, id=module.ID) as tab:
                    query_events += module.build(ctx, tab)

        upload_chain = query.upload(forget_gallery_index, None, [query_index, query_class], api_visibility="private")
        pick_chain = picker.select(pick_example, None, [query, query_index, query_class], api_visibility="private")
        for io in query_events:
            upload_chain = upload_chain.then(api_visibility="private", **io)
            pick_chain = pick_chain.then(api_visibility="private", **io)
    return demo
