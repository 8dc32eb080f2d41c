"""Runs tab: the models side by side as a person reads them, then their training curves.

- One comparison table, a row per model: method, data, architecture, steps, training time and hardware, and the
  evaluation figures (k-NN, 10 %-label linear probe, attention Jaccard, effective rank) from the `eval.json` beside
  the weights (written by `python -m dinotwins.ship`; "-" where a model has none).
- Curves from each run's `metrics.jsonl`, one panel per quantity. The loss is drawn relative to each run's first
  logged value, because Barlow Twins' loss (about 2 000 at the start) and DINO's (about ln K) differ by orders of
  magnitude; the hybrid's two terms have panels of their own in their own units. Where a quantity has a collapse
  threshold (the bands of the training's collapse monitor, from the run's config.yaml and its objective), it is
  drawn as a dotted line in the model's colour.
- Each model's provenance (the weights' metadata) in a collapsed accordion.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from app import exports
from app.models import ModelEntry
from app.tabs.base import TabContext
from dinotwins.training.runlog import read_metrics

TITLE, ID = "Runs", "runs"
COLOURS = qualitative.D3
# (metrics key, panel title); "loss" is drawn relative to each run's first logged value.
PANELS = (
    ("loss", "loss (÷ its first value)"),
    ("loss_dino", "DINO term (hybrid)"),
    ("loss_barlow", "Barlow term (hybrid)"),
    ("teacher_entropy", "teacher entropy per image (nats)"),
    ("teacher_marginal_entropy", "entropy of the teacher's batch mean (nats)"),
    ("kl_teacher_student", "KL(teacher || student)"),
    ("embed_std", "std of L2-normalized embeddings"),
    ("barlow_diag_rms_error", "Barlow: rms of 1 - C_ii"),
    ("lr", "learning rate"),
    ("grad_norm", "gradient norm"),
    ("img_per_s", "images / s"),
)
PANEL_COLUMNS = 4
TABLE_HEADERS = ("model", "method", "data", "architecture", "steps", "training", "k-NN top-1", "linear top-1",
                 "attn J mean / best head", "attn on object / object area", "map follows object", "eff. rank")
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


def architecture(entry: ModelEntry) -> str:
    m = entry.model
    return " · ".join([f"{len(m.backbone.blocks)} blocks", f"{m.embed_dim}-d", f"{m.num_heads} heads",
                       f"patch {m.patch_size}", f"{m.image_size} px", *m.config.extras()])


def comparison_rows(entries: list[ModelEntry]) -> list[list[str]]:
    """One row per model under `TABLE_HEADERS`."""
    rows = []
    for entry in entries:
        meta, report = entry.model.metadata or {}, read_eval(entry) or {}
        full = report.get("full") if isinstance(report.get("full"), dict) else {}
        seconds, device = report.get("train_seconds"), report.get("device")
        training = "-"
        if isinstance(seconds, (int, float)):
            training = f"{seconds / 3600:.1f} h" + (f" on {_first_clause(device)}" if device else "")
        steps = meta.get("steps", report.get("steps"))
        jaccards = (full.get("attn_jaccard_mean_heads"), full.get("attn_jaccard_best_head"))
        on_object = (full.get("attn_on_object"), full.get("object_area"))
        rows.append([entry.label, str(meta.get("method", "-")), str(meta.get("data", "-")), architecture(entry),
                     "-" if steps is None else str(steps), training, _percent(full.get("knn_top1")),
                     _percent(full.get("linear_top1")),
                     "-" if None in jaccards else f"{jaccards[0]:.3f} / {jaccards[1]:.3f}",
                     "-" if None in on_object else f"{on_object[0]:.3f} / {on_object[1]:.3f}",
                     "-" if full.get("attn_follows_object") is None else f"{full['attn_follows_object']:.2f}",
                     "-" if full.get("effective_rank") is None else f"{full['effective_rank']:.1f}"])
    return rows


def collapse_thresholds(entries: list[ModelEntry]) -> dict[str, list[tuple[str, float, str]]]:
    """{metrics key: [(model label, value, meaning)]}: the edges of each model's collapse bands, read from the
    objective of the run's own config.yaml (the bands the training's collapse monitor used); none without one."""
    from dinotwins.config import build_config, read_yaml
    from dinotwins.objectives import objective_class
    from dinotwins.objectives.collapse_bands import embedding_band

    lines: dict[str, list[tuple[str, float, str]]] = {}
    for entry in entries:
        path = next((f / "config.yaml" for f in filter(None, (entry.model.run_dir, entry.folder))
                     if (f / "config.yaml").is_file()), None)
        if path is None:
            continue
        try:
            cfg = build_config(read_yaml(path))
        except ValueError:  # a config this version cannot read: no lines rather than no tab
            continue
        bands = [*objective_class(cfg.method).collapse_bands(cfg), embedding_band(entry.model.embed_dim)]
        for band in bands:
            for edge in band.edges():
                lines.setdefault(band.key, []).append((entry.label, edge, f"collapse: {band.meaning}"))
    return lines


def run_card(entry: ModelEntry) -> str:
    """Markdown: the model's provenance (the weights' metadata), where its files are."""
    m = entry.model
    meta = m.metadata or {}
    lines = [f"**{entry.label}**", ""]
    lines += [f"- **{key}**: {_fmt(meta[key])}" for key in CARD_FIELDS if meta.get(key) not in (None, "")]
    lines.append(f"- **architecture**: {architecture(entry)}")
    lines.append(f"- **weights**: `{entry.path}` (sha256 {m.weights_hash[:12]}...)")
    metrics = metrics_path(entry)
    lines.append(f"- **metrics**: {f'`{metrics}`' if metrics else 'no metrics.jsonl beside the weights'}")
    report = read_eval(entry) or {}
    for key in ("command", "device"):
        if report.get(key):
            lines.append(f"- **{key}**: {_fmt(report[key])}")
    return "\n".join(lines)


def curves_figure(entries: list[ModelEntry], thresholds: dict[str, list[tuple[str, float, str]]] | None = None
                  ) -> go.Figure:
    """One panel per quantity any model logged (`PANELS`), against step, one colour per model. `thresholds` maps
    a metrics key to (model label, value, what it means) lines."""
    runs = {e.label: read_metrics(p) if (p := metrics_path(e)) else [] for e in entries}
    present = [(key, title) for key, title in PANELS if any(key in row for rows in runs.values() for row in rows)]
    cols = PANEL_COLUMNS
    grid_rows = max(1, math.ceil(len(present) / cols))
    fig = make_subplots(rows=grid_rows, cols=cols, subplot_titles=[t for _, t in present], horizontal_spacing=0.06,
                        vertical_spacing=0.14)
    colour = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(runs)}
    for position, (key, _) in enumerate(present):
        row, col = divmod(position, cols)
        for label, rows in runs.items():
            points = [(r["step"], r[key]) for r in rows if _number(r.get(key))]
            if not points:
                continue
            steps, values = zip(*points)
            if key == "loss" and values[0]:
                values = [v / values[0] for v in values]
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=label, legendgroup=label,
                                     showlegend=label not in _shown(fig),
                                     line=dict(color=colour[label], width=1.5)), row=row + 1, col=col + 1)
        seen: set[float] = set()
        for label, value, meaning in (thresholds or {}).get(key, []):
            if key == "loss" or label not in runs or not runs[label]:  # the loss panel is relative to the start
                continue
            fig.add_hline(y=value, line=dict(color=colour.get(label, "grey"), dash="dot", width=1),
                          annotation_text="" if value in seen else meaning, annotation_font_size=9,
                          row=row + 1, col=col + 1)
            seen.add(value)
    missing = [label for label, rows in runs.items() if not rows]
    fig.update_layout(height=260 * grid_rows + 80, margin=dict(l=10, r=10, t=70, b=10),
                      title=dict(text=f"no metrics.jsonl for: {', '.join(missing)}" if missing else "", x=0.01,
                                 font=dict(size=12)))
    return fig


def runs_export(entries: list[ModelEntry]) -> list[str]:
    """[CSV of the comparison table, JSON of every run's logged rows]."""
    folder = exports.export_folder()
    curves = {e.label: read_metrics(p) if (p := metrics_path(e)) else [] for e in entries}
    return [exports.write_csv(folder, "runs", list(TABLE_HEADERS), comparison_rows(entries)),
            exports.write_json(folder, "curves", curves)]


def build(ctx: TabContext, tab: gr.Tab) -> list[dict]:
    with gr.Row():
        export_button = gr.Button("Export the table and curves (CSV + JSON; the plot's camera icon saves a PNG)",
                                  size="sm")
        files = gr.File(label="Downloads", file_count="multiple", interactive=False, height=80)
    export_button.click(lambda: runs_export(ctx.entries), None, files, api_visibility="private")
    gr.Dataframe(value=comparison_rows(ctx.entries), headers=list(TABLE_HEADERS), interactive=False,
                 label="The models side by side (figures from each model's eval.json: full test split)",
                 elem_id="runs-table", wrap=True)
    gr.Plot(value=curves_figure(ctx.entries, collapse_thresholds(ctx.entries)),
            label="Training curves (dotted: each run's collapse thresholds)")
    with gr.Accordion("Provenance", open=False):
        with gr.Row():
            for entry in ctx.entries:
                gr.Markdown(run_card(entry))
    return []


def _shown(fig: go.Figure) -> set[str]:
    return {trace.name for trace in fig.data if trace.showlegend}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value: Any) -> str:
    return f"{100 * value:.1f} %" if _number(value) else "-"


def _first_clause(text: str) -> str:
    """The hardware part of a device note: up to its first semicolon."""
    return str(text).split(";")[0].strip()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("\n", " ")
