"""What every tab gets to build itself: the shared query panel's components and the app's state, and the one
wrapper that turns a handler's `UserError` into a `gr.Error`.

A tab module has `TITLE`, `ID` and `build(ctx) -> list[dict]`: inside the caller's `gr.Tab` it lays out its
components and wires its own events; it returns the event specs (keyword arguments of `Blocks` events: fn,
inputs, outputs) that must run again when the query changes (an upload or a clicked example).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.explorer import Explorer
from dinotwins.errors import UserError

UNKNOWN_CLASS = "unknown"


@dataclass
class TabContext:
    explorer: Explorer
    query: gr.Image  # the query image, a gr.Image FileData (gradio's preprocessing off)
    query_index: gr.Number  # a gallery index to query with (-1: the uploaded image)
    query_class: gr.Dropdown  # the class of an uploaded query, or UNKNOWN_CLASS

    @property
    def gallery(self):
        return self.explorer.gallery

    @property
    def entries(self):
        return self.explorer.entries


def gradio_errors(fn):
    """Let a handler's UserError reach the browser as a gr.Error (shown as a toast, one line)."""
    @functools.wraps(fn)  # keeps the signature gradio reads (defaults, gr.Progress)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper
