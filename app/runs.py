"""Runs tab: each model's run card and training curves.

The card comes from the weights' own metadata (`m.metadata`: method, data, steps, provenance, architecture)
and, when an `eval.json` sits in the run dir or beside the weights, its figures. The curves come from
`metrics.jsonl` (in the run dir or beside the exported weights): loss terms, the DINO teacher's entropy and
the embedding std, one colour per model so runs can be compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from app.models import ModelEntry
from dinotwins.training.runlog import read_metrics

CURVES = (  # (panel title, [(metrics key, line dash)])
    ("loss", [("loss", "solid"), ("loss_dino", "dash"), ("loss_barlow", "dot")]),
    ("teacher entropy (nats)", [("teacher_entropy", "solid")]),
    ("embedding std (x sqrt(d))", [("embed_std", "solid")]),
)
CARD_FIELDS = ("method", "data", "steps", "total_steps", "epochs", "git_commit", "created", "source", "note")


def metrics_path(entry: ModelEntry) -> Path | None:
    candidates = [entry.model.run_dir / "metrics.jsonl"] if entry.model.run_dir else []
    candidates.append(entry.folder / "metrics.jsonl")
    return next((p for p in candidates if p.is_file()), None)


def read_eval(entry: ModelEntry) -> dict[str, Any] | None:
    """eval.json from the run dir or beside the weights; None when absent or unreadable."""
    for folder in filter(None, (entry.model.run_dir, entry.folder)):
        path = folder / "eval.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text())
            except (OSError, ValueError):
                return None
            return value if isinstance(value, dict) else None
    return None


def run_card(entry: ModelEntry) -> str:
    """Markdown: the model's provenance, architecture and evaluation figures."""
    m = entry.model
    meta = m.metadata or {}
    lines = [f"### {entry.label}", ""]
    lines += [f"- **{key}**: {_fmt(meta[key])}" for key in CARD_FIELDS if meta.get(key) not in (None, "")]
    lines.append(f"- **architecture**: {m.embed_dim}-d, {m.num_heads} heads, patch {m.patch_size}, {m.image_size} px")
    lines.append(f"- **weights**: `{entry.path}` (sha256 {m.weights_hash[:12]}...)")
    metrics = metrics_path(entry)
    lines.append(f"- **metrics**: {f'`{metrics}`' if metrics else 'no metrics.jsonl beside the weights'}")
    evaluation = read_eval(entry)
    if evaluation:
        lines += ["", "**Evaluation** (eval.json)", ""]
        lines += [f"- **{key}**: {_fmt(value)}" for key, value in _flatten(evaluation)[:40]]
    return "\n".join(lines)


def curves_figure(entries: list[ModelEntry]) -> go.Figure:
    """Three panels (loss terms, teacher entropy, embedding std) against step, one colour per model."""
    fig = make_subplots(rows=1, cols=len(CURVES), subplot_titles=[title for title, _ in CURVES],
                        horizontal_spacing=0.07)
    colours = qualitative.D3
    missing = []
    for m_pos, entry in enumerate(entries):
        path = metrics_path(entry)
        rows = read_metrics(path) if path else []
        if not rows:
            missing.append(entry.label)
            continue
        for col, (_, keys) in enumerate(CURVES, start=1):
            for key, dash in keys:
                points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
                          and not (isinstance(r.get(key), float) and math.isnan(r[key]))]
                if not points:
                    continue
                steps, values = zip(*points)
                fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=f"{entry.label}: {key}",
                                         legendgroup=entry.label, line=dict(color=colours[m_pos % len(colours)],
                                                                            dash=dash)), row=1, col=col)
    for col in range(1, len(CURVES) + 1):
        fig.update_xaxes(title_text="step", row=1, col=col)
    note = f"no metrics.jsonl for: {', '.join(missing)}" if missing else ""
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=60, b=10),
                      title=dict(text=note, x=0.01, font=dict(size=12)))
    return fig


def _flatten(value: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            items += _flatten(v, name + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            items.append((name, v))
    return items


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("\n", " ")
