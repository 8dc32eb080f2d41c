"""The shipped demo models: present, small, loadable, and still giving the evaluation figures recorded beside them.

The check recomputes the evaluation on the fixed subset recorded in each eval.json (`ship.QUICK_CHECK`: 2000
train / 500 test Fashion-MNIST images, seed 0) with an empty feature cache, and compares every figure with the
recorded one within `ship.QUICK_CHECK_TOLERANCE` (absolute)."""

import json
import math
from pathlib import Path

import pytest

from dinotwins import load_model
from dinotwins.models.ship import QUICK_CHECK, QUICK_CHECK_TOLERANCE, quick_check_row
from dinotwins.objectives import METHODS

DEMO = Path(__file__).resolve().parent.parent / "assets" / "models"
FIGURES = ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "attn_jaccard_mean_heads",
           "attn_jaccard_best_head", "embedding_std")


@pytest.mark.parametrize("method", METHODS)
def test_demo_model_is_shipped_small_with_its_records(method):
    folder = DEMO / method
    weights = folder / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 10 * 2**20
    assert (folder / "metrics.jsonl").stat().st_size > 0 and (folder / "config.yaml").is_file()
    report = json.loads((folder / "eval.json").read_text())
    assert report["command"].startswith("python train.py --method " + method)
    model = load_model(folder)
    assert model.metadata["method"] == method and model.metadata["steps"] == report["steps"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_demo_model_reproduces_its_recorded_quick_check(method, tmp_path):
    report = json.loads((DEMO / method / "eval.json").read_text())
    recorded = report["quick_check"]
    assert {k: recorded[k] for k in QUICK_CHECK} == QUICK_CHECK
    row = quick_check_row(load_model(DEMO / method), recorded["data"], cache_dir=tmp_path)
    assert (row["num_train"], row["num_test"]) == (QUICK_CHECK["limit_train"], QUICK_CHECK["limit_test"])
    for key in FIGURES:
        expected = recorded["row"][key]
        assert expected is not None and not math.isnan(expected), key
        assert row[key] == pytest.approx(expected, abs=QUICK_CHECK_TOLERANCE), key
