"""The explorer's tabs in display order: one module per tab, owning its handlers and its layout (see base.py
for what a tab module provides). A new tab is one module here and one entry in `TABS`."""

from app.tabs import attention, embeddings, patches, retrieval, runs, steps

TABS = (attention, patches, retrieval, embeddings, steps, runs)
