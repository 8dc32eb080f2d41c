"""DinoTwins Explorer app: compare DINO, Barlow Twins and hybrid ViTs on attention, retrieval and embeddings.

`python -m app [MODEL ...] [--gallery SPEC]` launches it; `app.ui.build_app(models, gallery)` builds the Blocks
without launching (tests, notebooks). See app/__main__.py for the command line.
"""
