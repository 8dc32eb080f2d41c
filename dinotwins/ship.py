"""Package a finished run as a shipped demo model: `python -m dinotwins.ship RUN_DIR DEST --command "..."`.

DEST receives the exported weights (`model.safetensors`, fp16 in the demo preset), the run's `metrics.jsonl` and
`config.yaml`, and `eval.json`:
- `full`: the evaluation row of the model on the data's full train/test splits (evaluation/rows.py's columns), plus the
  two baselines on the same splits;
- `quick_check`: the same row on a fixed, seeded subset (`QUICK_CHECK`), which tests/test_demo_models.py
  recomputes to prove the shipped weights still give the recorded numbers;
- `command`: the exact command that trained the run, `train_seconds`: the training time summed from the logged
  throughput (images per logged interval / img_per_s), `steps`, `device`.
With `--exports STEP ...`, the run's weights kept at those steps (`exports/`, from `--export-every`) go along, so the
explorer's Over training tab can show the shipped model's attention along the way.
`python -m dinotwins.ship --recheck DEST ...` recomputes only the `quick_check` of shipped folders, in place (after a
change to `QUICK_CHECK`); the rest of eval.json stays as it was measured.
`python -m dinotwins.ship --rescore DEST ...` recomputes `full` and `baselines` on the full splits, in place (after a
change to the evaluation, such as the random-init row becoming a mean of seeds); folders of one data set and one
model shape are scored together, so they share one set of baseline rows. `scoring` says where either was measured.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from dinotwins.cli import OneLineParser
from dinotwins.cpu import cpu_description
from dinotwins.data import load_dataset
from dinotwins.errors import UserError
from dinotwins.evaluation.rows import evaluate_all, evaluate_model, limit_dataset
from dinotwins.files import atomic_write
from dinotwins.models.export import EXPORTS_DIR, export_path, git_commit
from dinotwins.models.load import LoadedModel, load_model
from dinotwins.training.runlog import read_metrics

# The quick check's probe runs at a fixed C: on its 200 labels, picking C from 42 held-out images flips between
# equally scored values with the last bits of the features (AVX2 and AVX512 kernels differ), 0.02 of top-1.
QUICK_CHECK = {"limit_train": 2000, "limit_test": 500, "seed": 0, "k": 20, "temperature": 0.07,
               "label_fraction": 0.1, "linear_c": 1.0}
QUICK_CHECK_TOLERANCE = 0.01  # absolute, on accuracies and Jaccards: room for BLAS differences across machines
FILES = ("model.safetensors", "metrics.jsonl", "config.yaml")


def train_seconds(metrics: list[dict[str, Any]], images_per_step: int) -> float:
    """Wall time of training, summed from each logged interval's throughput."""
    seconds, last_step = 0.0, 0
    for row in metrics:
        rate = row.get("img_per_s")
        if isinstance(rate, (int, float)) and rate > 0:
            seconds += (row["step"] - last_step) * images_per_step / rate
        last_step = row["step"]
    return seconds


def quick_check_row(model, data: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The evaluation row on the fixed subset `QUICK_CHECK` of `data` (no baselines)."""
    q = QUICK_CHECK
    train = limit_dataset(load_dataset(data, "train", image_size=model.image_size), q["limit_train"], q["seed"])
    test = limit_dataset(load_dataset(data, "test", image_size=model.image_size), q["limit_test"], q["seed"])
    return evaluate_model(model, train, test, k=q["k"], temperature=q["temperature"],
                          label_fraction=q["label_fraction"], seed=q["seed"], cache_dir=cache_dir,
                          linear_c=q["linear_c"])


def quick_check_entry(model, data: str) -> dict[str, Any]:
    """eval.json's `quick_check`: the protocol, the tolerance the test allows, and the row."""
    return {**QUICK_CHECK, "data": data, "tolerance": QUICK_CHECK_TOLERANCE, "row": quick_check_row(model, data)}


def recheck(dest: Path) -> dict[str, Any]:
    """Recompute the quick check of the shipped folder `dest` and write it into its eval.json."""
    report = read_report(dest, "recheck")
    report["quick_check"] = quick_check_entry(load_model(dest / "model.safetensors"), report["data"])
    _write_report(dest, report)
    return report["quick_check"]


def scoring_note() -> dict[str, Any]:
    """eval.json's `scoring`: the commit, CPU and thread count its `full` and `baselines` were measured at."""
    return {"commit": git_commit(), "cpu": cpu_description()["cpu"], "threads": torch.get_num_threads()}


def read_report(dest: Path, action: str) -> dict[str, Any]:
    """The eval.json of a shipped folder, with its data; UserError naming the folder otherwise."""
    try:
        report = json.loads((dest / "eval.json").read_text())
        if not isinstance(report["data"], str):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{dest} has no readable eval.json with its data ({exc.__class__.__name__}); "
                        f"{action} a folder that python -m dinotwins.ship wrote") from None
    return report


def rescore(dests: list[Path]) -> dict[Path, dict[str, Any]]:
    """Recompute `full` and `baselines` of the shipped folders `dests` on their data's full splits and write them
    into each eval.json (with `scoring`); nothing is written unless every folder reads and scores."""
    reports = {dest: read_report(dest, "rescore") for dest in dests}
    models = {dest: load_model(dest / "model.safetensors") for dest in dests}
    groups: dict[tuple[str, str], list[Path]] = {}  # one evaluation per data set and model shape
    for dest, model in models.items():
        shape = LoadedModel.random_like(model).name
        groups.setdefault((reports[dest]["data"], shape), []).append(dest)
    note, scored = scoring_note(), {}
    for (data, _), members in groups.items():
        size = models[members[0]].image_size
        train, test = (load_dataset(data, split, image_size=size) for split in ("train", "test"))
        rows = evaluate_all([models[dest] for dest in members], train, test)
        for i, dest in enumerate(members):
            scored[dest] = {**reports[dest], "full": rows[i], "baselines": rows[len(members):], "scoring": note}
    for dest, report in scored.items():
        _write_report(dest, report)
    return scored


def _write_report(dest: Path, report: dict[str, Any]) -> None:
    atomic_write(dest / "eval.json", (json.dumps(report, indent=2) + "\n").encode())


def ship(run_dir: Path, dest: Path, command: str, data: str, device_note: str,
         exports: list[int] | None = None) -> dict[str, Any]:
    missing = [name for name in FILES if not (run_dir / name).is_file()]
    kept = [export_path(run_dir, step) for step in exports or []]
    missing += [str(path.relative_to(run_dir)) for path in kept if not path.is_file()]
    if missing:
        raise UserError(f"{run_dir} lacks {', '.join(missing)}; ship a finished run (and steps it exported)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = read_metrics(run_dir / "metrics.jsonl")
    model = load_model(run_dir / "model.safetensors")
    train, test = (load_dataset(data, split, image_size=model.image_size) for split in ("train", "test"))
    full = evaluate_all([model], train, test)  # the model's row, then the baselines
    steps = int(model.metadata.get("steps") or (metrics[-1]["step"] if metrics else 0))
    report = {
        "command": command,
        "device": device_note,
        "data": data,
        "steps": steps,  # of the exported weights (a run cut short exports its last save)
        "total_steps": model.metadata.get("total_steps"),
        "train_seconds": round(train_seconds([r for r in metrics if r["step"] <= steps], int(config["batch_size"])), 1),
        "full": full[0],
        "baselines": full[1:],
        "scoring": scoring_note(),
        "quick_check": quick_check_entry(model, data),
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(run_dir / name, dest / name)
    if kept:
        (dest / EXPORTS_DIR).mkdir(exist_ok=True)
        for path in kept:
            shutil.copyfile(path, dest / EXPORTS_DIR / path.name)
    _write_report(dest, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m dinotwins.ship", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, nargs="?")
    p.add_argument("dest", type=Path, nargs="?")
    p.add_argument("--command", help="the exact command that trained the run (required to ship)")
    p.add_argument("--data", default="fashion-mnist", help="what to evaluate on (default fashion-mnist)")
    p.add_argument("--device-note", default="", help="where it trained, e.g. '1x H100' or '2-core CPU'")
    p.add_argument("--exports", type=int, nargs="*", default=[], metavar="STEP",
                   help="also ship the run's exports/ of these steps (the Over training tab)")
    p.add_argument("--recheck", type=Path, nargs="+", metavar="SHIPPED",
                   help="instead: recompute the quick check of these shipped folders, in place")
    p.add_argument("--rescore", type=Path, nargs="+", metavar="SHIPPED",
                   help="instead: recompute the full-split rows and baselines of these shipped folders, in place")
    try:
        args = p.parse_args(argv)
        if args.recheck:
            for dest in args.recheck:
                print(dest, json.dumps(recheck(dest)["row"]))
            return 0
        if args.rescore:
            for dest, report in rescore(args.rescore).items():
                print(dest, json.dumps(report["full"]))
            return 0
        if args.run_dir is None or args.dest is None or args.command is None:
            p.error("give RUN_DIR DEST --command '...' to ship, or --recheck or --rescore SHIPPED ...")
        report = ship(args.run_dir, args.dest, args.command, args.data, args.device_note, args.exports)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report["full"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
