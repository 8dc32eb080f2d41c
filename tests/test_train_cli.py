"""train.py from the command line: runs, run folders, bad input, and torchrun with 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from dinotwins.objectives import METHODS
from tests.conftest import torchrun

ROOT = Path(__file__).resolve().parents[1]


def run_train(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_smoke_run_writes_config_metrics_checkpoint_and_export(tmp_path):
    out = tmp_path / "run"
    r = run_train("--method", "hybrid", "--data", "synthetic:64", "--preset", "smoke", "--out", out,
                  "--no-progress", "--export-every", "2")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "hybrid" and cfg["model"]["depth"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for key in ("epoch", "loss", "loss_dino", "loss_barlow", "lr", "weight_decay", "momentum", "teacher_temp",
                "img_per_s", "data_wait", "teacher_entropy", "teacher_marginal_entropy", "kl_teacher_student",
                "embed_std", "barlow_on_diag", "barlow_off_diag"):
        assert key in rows[-1], key
    assert (out / "model.safetensors").is_file()
    assert list((out / "checkpoints").glob("step_*.pt"))
    # --export-every 2: the weights of steps 2 and 4 kept for a learning curve, the last one the final model's.
    kept = sorted((out / "exports").iterdir())
    assert [p.name for p in kept] == ["step_00000002.safetensors", "step_00000004.safetensors"]
    with safe_open(str(kept[0]), "pt") as f:
        assert json.loads(f.metadata()["dinotwins"])["steps"] == 2
    first, last, final = tensors(kept[0]), tensors(kept[1]), tensors(out / "model.safetensors")
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)
    assert not all(torch.equal(first[k], last[k]) for k in last)


def tensors(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in sorted(f.keys())}


@pytest.mark.parametrize("args,needle", [
    (["--method", "mae", "--data", "synthetic"], "invalid choice"),
    (["--method", "dino", "--data", "imagenet:/x"], "unknown data spec"),
    (["--method", "dino", "--data", "folder:/does/not/exist"], "/does/not/exist"),
    (["--method", "dino", "--data", "synthetic", "--batch-size", "1"], "--batch-size"),
    (["--method", "dino", "--data", "synthetic", "--set", "dino.nope=3"], "dino.nope"),
    (["--method", "dino", "--data", "synthetic", "--epochs", "-1"], "--epochs"),
    (["--method", "dino", "--data", "synthetic", "--export-every", "-5"], "--export-every"),
    (["--method", "dino", "--data", "synthetic", "--preset", "huge"], "unknown preset"),
    (["--method", "dino", "--data", "synthetic", "--set", "optim.base_lr=fast"], "optim.base_lr"),
    (["--method", "dino", "--data", "synthetic", "--set", "optim.base_lr=.nan"], "optim.base_lr"),
    (["--method", "dino", "--data", "synthetic", "--set", "model.reg_tokens=-1"], "model.reg_tokens"),
    (["--method", "dino", "--data", "synthetic", "--set", "model.pos_embed=sincos"], "model.pos_embed must be"),
    (["--method", "dino", "--data", "synthetic", "--set", "compile_mode=fast"], "compile_mode must be one of"),
    (["--method", "dino", "--data", "scenes", "--set", "model.image_size=16", "--set", "augment.global_size=16",
      "--set", "model.patch_size=16", "--set", "augment.local_size=16"], "fewer than 2 x 2 patches"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "run"
    preset = [] if "--preset" in args else ["--preset", "smoke"]
    r = run_train(*args, *preset, "--out", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_an_existing_run_is_never_overwritten_without_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    r = run_train("--method", "dino", "--data", "synthetic:64", "--preset", "smoke", "--out", out)
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (out / "precious.txt").read_text() == "keep" and len(list(out.iterdir())) == 1


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_train("--method", "dino", "--data", f"folder:{tmp_path / 'empty'}", "--preset", "smoke",
                  "--out", tmp_path / "run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_trains_and_only_rank0_writes(tmp_path):
    out = tmp_path / "ddp"
    r = torchrun("train.py", "--method", "hybrid", "--data", "synthetic:64", "--preset", "smoke", "--out", str(out),
                 "--device", "cpu", "--no-progress", "--batch-size", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # one writer: no duplicate rows
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_one_process_run_resumes_under_torchrun_at_the_same_global_batch(tmp_path):
    out = tmp_path / "moved"
    common = ["train.py", "--method", "dino", "--data", "synthetic:64", "--preset", "smoke", "--out", str(out),
              "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, *common, "--max-steps", "2"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    r = torchrun(*common, "--batch-size", "8", "--resume")  # the smoke preset's 16, over two processes
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4] and rows[2]["epoch"] == 0.75  # the same steps per epoch


@pytest.mark.slow
def test_torchrun_ranks_hold_the_same_weights_after_one_backward_per_crop_resolution():
    r = torchrun("tests/ddp_sync_worker.py")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ranks in sync" in r.stdout


def test_set_reads_exponent_numbers_that_yaml_leaves_as_strings():
    from dinotwins.training.cli import build_parser, resolve_config
    from dinotwins.config import build_config

    args = build_parser().parse_args(["--method", "dino", "--data", "synthetic", "--out", "x",
                                      "--set", "optim.base_lr=1e-3", "--set", "optim.min_lr=2E-6"])
    cfg = build_config(resolve_config(args))
    assert cfg.optim.base_lr == 1e-3 and cfg.optim.min_lr == 2e-6


@pytest.mark.parametrize("preset", ["default", "demo", "cpu", "smoke", "scenes", "bench", "bench-gpu"])
@pytest.mark.parametrize("method", METHODS)
def test_every_shipped_preset_resolves_to_a_valid_config(preset, method):
    from dinotwins.config import available_presets, build_config, load_preset, merge

    assert preset in available_presets()
    cfg = build_config(merge(load_preset(preset), {"method": method}))
    assert cfg.augment.global_size == cfg.model.image_size and cfg.method == method


# ------------------------------------------------------------------------------------------------- no torch to say no
TRAIN_PY_UNDER_WATCH = """import runpy, sys
sys.argv = ["train.py", *sys.argv[1:]]
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as stop:
    print("exit", stop.code)
print("heavy:", *sorted(m for m in ("torch", "timm") if m in sys.modules))
"""


def test_the_config_and_the_registries_import_no_torch():
    code = ("import sys, dinotwins, dinotwins.config, dinotwins.cli, dinotwins.data, dinotwins.objectives, "
            "dinotwins.training.cli; print(*sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


@pytest.mark.parametrize("args,code", [
    (["--help"], 0),
    (["--method", "mae", "--data", "synthetic", "--out", "x"], 2),
    (["--method", "dino", "--data", "synthetic", "--out", "x", "--bogus"], 2),
    (["--method", "dino", "--data", "synthetic", "--out", "x", "--batch-size", "1"], 2),
    (["--method", "dino", "--data", "synthetic", "--out", "x", "--preset", "huge"], 2),
])
def test_help_and_a_bad_flag_import_no_torch(tmp_path, args, code):
    r = subprocess.run([sys.executable, "-c", TRAIN_PY_UNDER_WATCH, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-2:] == [f"exit {code}", "heavy:"], r.stdout + r.stderr
    if code:
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr


def test_a_folder_decoded_by_workers_trains_the_same_model_and_logs_the_data_wait(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from dinotwins.data import folder as folder_source
    from dinotwins.training.trainer import train
    from tests.conftest import smoke_config

    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
            images / f"{i:02d}.jpg")
    monkeypatch.setattr(folder_source, "IN_MEMORY_BUDGET", 0)  # decoded per batch, as a large folder is
    runs = {w: train(smoke_config("dino", data=f"folder:{images}", data_workers=w, precision="fp32"),
                     tmp_path / f"w{w}", progress=False) for w in (0, 2)}
    weights = {w: tensors(run / "model.safetensors") for w, run in runs.items()}
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    rows = [json.loads(line) for line in (runs[2] / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["data_wait"] < 1.0 for r in rows)
