"""The shipped demo models: present, small, loadable, and still giving the evaluation figures recorded beside them.

Every demo set (`assets/models/<set>/<method>/`) holds one model per registered method. The check recomputes the
evaluation on the fixed subset recorded in each eval.json (`ship.QUICK_CHECK`: 2000 train / 500 test images of the
set's data, seed 0) with an empty feature cache, and compares every figure with the recorded one within
`ship.QUICK_CHECK_TOLERANCE` (absolute)."""

import json
import math
from pathlib import Path

import pytest

from app.models import DEMO_SETS
from dinotwins import load_model
from dinotwins.objectives import METHODS
from dinotwins.ship import QUICK_CHECK, QUICK_CHECK_TOLERANCE, quick_check_row

DEMO = Path(__file__).resolve().parent.parent / "assets" / "models"
SETS = DEMO_SETS  # every demo set the app offers is shipped
FIGURES = ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "attn_jaccard_mean_heads",
           "attn_jaccard_best_head", "embedding_std")


SHIPPED = [(demo_set, method) for demo_set in SETS for method in METHODS]


@pytest.mark.parametrize("demo_set,method", SHIPPED)
def test_demo_model_is_shipped_small_with_its_records(demo_set, method):
    folder = DEMO / demo_set / method
    weights = folder / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 10 * 2**20
    assert (folder / "metrics.jsonl").stat().st_size > 0 and (folder / "config.yaml").is_file()
    report = json.loads((folder / "eval.json").read_text())
    assert report["command"].startswith("python train.py --method " + method)
    model = load_model(folder)
    assert model.metadata["method"] == method and model.metadata["steps"] == report["steps"]
    assert report["data"] == demo_set


@pytest.mark.slow
@pytest.mark.parametrize("demo_set,method", SHIPPED)
def test_demo_model_reproduces_its_recorded_quick_check(demo_set, method, tmp_path):
    report = json.loads((DEMO / demo_set / method / "eval.json").read_text())
    recorded = report["quick_check"]
    assert {k: recorded[k] for k in QUICK_CHECK} == QUICK_CHECK
    row = quick_check_row(load_model(DEMO / demo_set / method), recorded["data"], cache_dir=tmp_path)
    assert (row["num_train"], row["num_test"]) == (QUICK_CHECK["limit_train"], QUICK_CHECK["limit_test"])
    for key in FIGURES:
        expected = recorded["row"][key]
        assert expected is not None and not math.isnan(expected), key
        assert row[key] == pytest.approx(expected, abs=QUICK_CHECK_TOLERANCE), key


@pytest.mark.slow
def test_recheck_rewrites_only_the_quick_check(tmp_path, capsys):
    from dinotwins.ship import main as ship_main

    shipped = tmp_path / "dino"
    shipped.mkdir()
    for name in ("model.safetensors", "eval.json"):
        (shipped / name).write_bytes((DEMO / "fashion-mnist" / "dino" / name).read_bytes())
    report = json.loads((shipped / "eval.json").read_text())
    stale = {**report, "quick_check": {"limit_train": 1, "row": {"knn_top1": -1.0}}}
    (shipped / "eval.json").write_text(json.dumps(stale))
    assert ship_main(["--recheck", str(shipped)]) == 0
    rechecked = json.loads((shipped / "eval.json").read_text())
    assert {k: v for k, v in rechecked.items() if k != "quick_check"} == {k: v for k, v in report.items()
                                                                           if k != "quick_check"}
    assert {k: rechecked["quick_check"][k] for k in QUICK_CHECK} == QUICK_CHECK
    assert rechecked["quick_check"]["row"]["knn_top1"] == pytest.approx(report["quick_check"]["row"]["knn_top1"],
                                                                        abs=QUICK_CHECK_TOLERANCE)
    # a folder that python -m dinotwins.ship did not write: one line, exit 2, nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert ship_main(["--recheck", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and not any(empty.iterdir())


@pytest.mark.slow
def test_rescore_rewrites_the_full_rows_and_shares_the_baselines_of_one_shape(tmp_path, capsys):
    from dinotwins.evaluation.rows import RANDOM_INITS, random_init_name
    from dinotwins.ship import main as ship_main

    folders = [tmp_path / "a", tmp_path / "b"]
    report = json.loads((DEMO / "fashion-mnist" / "dino" / "eval.json").read_text())
    for folder in folders:  # the same weights twice, scored on a small synthetic set instead of the full splits
        folder.mkdir()
        (folder / "model.safetensors").write_bytes((DEMO / "fashion-mnist" / "dino" / "model.safetensors").read_bytes())
        (folder / "eval.json").write_text(json.dumps({**report, "data": "synthetic:64"}))
    assert ship_main(["--rescore", *map(str, folders)]) == 0
    a, b = (json.loads((folder / "eval.json").read_text()) for folder in folders)
    kept = {k: v for k, v in report.items() if k not in ("full", "baselines", "data", "scoring")}
    assert {k: v for k, v in a.items() if k in kept} == kept and a["data"] == "synthetic:64"
    assert (a["full"]["num_train"], a["full"]["num_test"]) == (64, 64) and a["full"] != report["full"]
    assert a["full"]["attn_jaccard_mean_heads"] is not None and (a["full"]["model"], b["full"]["model"]) == ("a", "b")
    assert {**a["full"], "model": "b"} == b["full"]  # the same weights give the same row
    names = [row["model"] for row in a["baselines"]]
    model = load_model(folders[0])
    random_name = random_init_name(model.random_like(model).name, RANDOM_INITS)
    assert names == ["raw pixels", random_name, "object masks as maps (28 px, 7 x 7 patches)",
                     "mean train object as every map (28 px, 7 x 7 patches)"]  # synthetic has masks
    assert a["baselines"] == b["baselines"] and a["scoring"]["cpu"] and a["scoring"]["commit"]
    # one folder that python -m dinotwins.ship did not write: one line, exit 2, and neither folder rewritten
    empty = tmp_path / "empty"
    empty.mkdir()
    before = (folders[0] / "eval.json").read_bytes()
    capsys.readouterr()
    assert ship_main(["--rescore", str(folders[0]), str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "empty" in err
    assert (folders[0] / "eval.json").read_bytes() == before and not any(empty.iterdir())
