"""Reliability of training runs and of files from strangers: exact resume after a real `kill -9`, atomic and
verified checkpoints with fallback, NaN/inf stops, the collapse monitor, and checkpoints that carry a pickle
payload, NaN weights or wrong shapes. Everything is the smoke preset on synthetic data, a few steps."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dinotwins import load_model
from dinotwins.models.backbone import create_backbone
from dinotwins.models.config import ModelConfig
from dinotwins.objectives import base, dino
from dinotwins.objectives.barlow import barlow_collapse_bands
from dinotwins.objectives.dino import dino_collapse_bands
from dinotwins.objectives.heads import DINOHead
from dinotwins.training.checkpoint import latest_good, list_checkpoints, load_state, save_checkpoint
from dinotwins.training.cli import main as train_main
from dinotwins.objectives.collapse_bands import embedding_band
from dinotwins.training.collapse import CollapseMonitor
from dinotwins.training.runlog import read_metrics
from dinotwins.config import build_config, merge, read_yaml
from dinotwins.errors import TrainingStopped, UserError
from dinotwins.files import checksum_problem, sha256_file
from dinotwins.training.trainer import CHECKPOINT_DIR, Trainer
from tests.conftest import smoke_config

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: bitwise comparable


# ------------------------------------------------------------------------------------------------- helpers
def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_config(run: Path, **overrides):
    return build_config(merge(read_yaml(run / "config.yaml"), overrides))


def snapshot(folder: Path) -> dict[str, str]:
    """{file name: sha256} of every file in a folder (hidden temporaries included)."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def flat(obj, prefix=""):
    """Nested dicts/lists of a checkpoint -> {dotted key: leaf}."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in flat(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() == \
                y.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes(), f"{key} differs"
        else:
            assert x == y, key


def exported(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def plant(folder: Path, step: int, payload_bytes: bytes) -> Path:
    """Put `payload_bytes` in place as checkpoint `step`, with a matching size/sha256 record (so only the
    loader itself stands between the file and the trainer)."""
    path = folder / f"step_{step:08d}.pt"
    path.write_bytes(payload_bytes)
    path.with_name(path.name + ".sha256").write_text(json.dumps({"size": len(payload_bytes),
                                                                  "sha256": sha256_file(path)}))
    assert checksum_problem(path) is None
    return path


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_file(tmp_path: Path, marker: Path, kind: str) -> bytes:
    obj = {"step": torch.tensor(4), "modules": Payload(marker)}
    path = tmp_path / f"payload.{kind}"
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(obj))
    data = path.read_bytes()
    path.unlink()
    return data


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # so "the marker was never created" below means the loader refused it


# ------------------------------------------------------------------------------------------------- exact resume
# The reference and the killed run are separate processes: the timed `auto` choices (attention path, precision)
# are pinned so both compute the same way (each run keeps its own choice across resumes in config.yaml).
TRAIN_ARGS = ["--method", "hybrid", "--data", "synthetic:64", "--preset", "smoke", "--device", "cpu",
              "--epochs", "4", "--max-steps", "16", "--save-every", "4", "--no-progress",
              "--precision", "fp32", "--set", "attention=explicit"]


def start_train(*args: str, log: Path) -> subprocess.Popen:
    """train.py as a foreground run: SIGINT at its default even when this suite runs as a background job (a shell
    starts those ignoring SIGINT, and train.py rightly keeps a signal it was started ignoring)."""
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def rows_written(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def signal_after_rows(proc: subprocess.Popen, run: Path, rows: int, log: Path, sig: int,
                      timeout: float = 240) -> None:
    """Send `sig` to a running train.py once its metrics.jsonl has `rows` rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"train.py ended (rc {proc.returncode}) before it got the signal:\n{log.read_text()}")
        if rows_written(run) >= rows:
            os.kill(proc.pid, sig)
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"train.py wrote fewer than {rows} rows in {timeout} s:\n{log.read_text()}")


def kill_9_after_rows(proc: subprocess.Popen, run: Path, rows: int, log: Path) -> None:
    signal_after_rows(proc, run, rows, log, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_twice_then_resume_gives_the_uninterrupted_model_bitwise(tmp_path):
    ref, run, log = tmp_path / "reference", tmp_path / "killed", tmp_path / "train.log"
    reference = start_train(*TRAIN_ARGS, "--out", str(ref), log=tmp_path / "reference.log")

    # 1st life: killed mid-epoch 2, two steps after the step-4 checkpoint (rows 5-6 are beyond it).
    kill_9_after_rows(start_train(*TRAIN_ARGS, "--out", str(run), log=log), run, 6, log)
    saved = [int(p.name[5:13]) for p in list_checkpoints(run / CHECKPOINT_DIR)]
    assert saved and max(saved) < rows_written(run)  # some logged rows are newer than the newest checkpoint
    # 2nd life: `--resume` alone (the run's own config.yaml), killed again in epoch 3.
    kill_9_after_rows(start_train("--out", str(run), "--resume", "--no-progress", log=log), run, 11, log)
    # 3rd life: to the end.
    final = subprocess.run([sys.executable, "train.py", "--out", str(run), "--resume", "--no-progress"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert final.returncode == 0, final.stderr[-3000:]
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    # The model is the uninterrupted run's, bit for bit: the export and the whole final training state
    # (student, teacher, DINO center, projector BN statistics, optimizer moments and step counts).
    assert_bitwise_equal(exported(ref / "model.safetensors"), exported(run / "model.safetensors"))
    final_ckpt = f"{CHECKPOINT_DIR}/step_00000016.pt"
    assert_bitwise_equal(flat(load_state(ref / final_ckpt)), flat(load_state(run / final_ckpt)))
    # metrics.jsonl: exactly one row per step, each equal to the uninterrupted run's row (timing aside).
    got, want = metric_rows(run), metric_rows(ref)
    assert [r["step"] for r in got] == list(range(1, 17))
    for g, w in zip(got, want):
        for timing in ("img_per_s", "data_wait"):
            g.pop(timing), w.pop(timing)
        assert g == w, g["step"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_finished_step_then_resume_runs_to_the_end(tmp_path, sig):
    run, log = tmp_path / "stopped", tmp_path / "train.log"
    args = list(TRAIN_ARGS)
    args[args.index("--save-every") + 1] = "100"
    proc = start_train(*args, "--out", str(run), log=log)
    signal_after_rows(proc, run, 3, log, sig)
    proc.wait(timeout=120)
    err = log.read_text()
    # No periodic checkpoint was due (every 100 steps): the one there is the signal's, of the last finished step.
    assert proc.returncode == 128 + sig, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"interrupted: {sig.name} at step ")
    saved = [int(p.name[5:13]) for p in list_checkpoints(run / CHECKPOINT_DIR)]
    assert len(saved) == 1 and 3 <= saved[0] < 16 and saved[0] == rows_written(run)
    assert f"at step {saved[0]} of 16" in err
    final = subprocess.run([sys.executable, "train.py", "--out", str(run), "--resume", "--no-progress"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert final.returncode == 0, final.stderr[-3000:]
    assert [r["step"] for r in metric_rows(run)] == list(range(1, 17))


# ------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_written_through_a_same_folder_temporary_fsynced_and_replaced(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", fd)) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("replace", Path(a), Path(b))) or
                        real_replace(a, b))
    path = save_checkpoint(tmp_path, 7, {"step": torch.tensor(7), "w": torch.ones(3)})
    replaces = [c for c in calls if c[0] == "replace"]
    src, dst = replaces[0][1:]
    assert dst == path and src.parent == path.parent and src.name.startswith(".") and src != dst
    assert [c[0] for c in calls].index("fsync") < calls.index(replaces[0])  # data on disk before the rename
    assert checksum_problem(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256"]


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "record missing"])
def test_a_damaged_newest_checkpoint_is_named_skipped_and_kept(smoke_runs, tmp_path, damage):
    run = copy_run(smoke_runs["dino"], tmp_path / "run")
    folder = run / CHECKPOINT_DIR
    newest = folder / "step_00000004.pt"
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "corrupted":
        newest.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    else:
        newest.with_name(newest.name + ".sha256").unlink()
    before = snapshot(folder)
    reason = {"truncated": "truncated", "corrupted": "corrupted", "record missing": ".sha256 record"}[damage]
    with pytest.warns(UserWarning, match=rf"skipping checkpoint .*step_00000004\.pt: .*{reason}.*falling back"):
        trainer = Trainer(run_config(run), run, resume=True, progress=False)
    assert trainer.step == 2  # the previous good one
    assert snapshot(folder) == before  # nothing deleted, nothing rewritten
    assert [r["step"] for r in metric_rows(run)] == [1, 2]  # rows after the checkpoint dropped, to be redone
    # Finishing from the fallback gives the same model the run had before the damage (same process, same seed).
    trainer.run()
    assert_bitwise_equal(exported(smoke_runs["dino"] / "model.safetensors"), exported(run / "model.safetensors"))
    assert [r["step"] for r in metric_rows(run)] == [1, 2, 3, 4]
    assert checksum_problem(newest) is None and checksum_problem(folder / "step_00000002.pt") is None


def test_resume_with_no_good_checkpoint_is_a_clear_error_and_deletes_nothing(smoke_runs, tmp_path):
    run = copy_run(smoke_runs["barlow"], tmp_path / "run")
    for path in list_checkpoints(run / CHECKPOINT_DIR):
        path.write_bytes(path.read_bytes()[:100])
    before = snapshot(run / CHECKPOINT_DIR)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError, match="no usable checkpoint"):
        warnings.simplefilter("always")
        Trainer(run_config(run), run, resume=True, progress=False)
    skipped = [str(w.message) for w in caught if "skipping checkpoint" in str(w.message)]
    assert len(skipped) == 2 and "step_00000004.pt: size 100 bytes" in skipped[0] and "step_00000002.pt" in skipped[1]
    assert snapshot(run / CHECKPOINT_DIR) == before


# ------------------------------------------------------------------------------------------------- NaN / inf
def test_a_nan_loss_stops_the_cli_with_exit_3_and_keeps_the_last_good_checkpoint(smoke_runs, tmp_path):
    run = copy_run(smoke_runs["hybrid"], tmp_path / "run")
    checkpoints, model = snapshot(run / CHECKPOINT_DIR), sha256_file(run / "model.safetensors")
    # Continue the finished 4-step run to 8 steps with an absurd learning rate: step 4 is fine but its update
    # blows the weights up, so step 5's loss is NaN.
    r = subprocess.run([sys.executable, "train.py", "--out", str(run), "--resume", "--no-progress", "--epochs", "2",
                        "--max-steps", "8", "--set", "optim.base_lr=1.0e+30"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=ENV)
    assert r.returncode == 3, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("stopped: loss is nan at step 5; stopped before the update"), r.stderr[-2000:]
    assert str(run / CHECKPOINT_DIR) in last and "Traceback" not in r.stderr
    assert snapshot(run / CHECKPOINT_DIR) == checkpoints  # step 4's checkpoint is still the newest, untouched
    assert sha256_file(run / "model.safetensors") == model
    path, state = latest_good(run / CHECKPOINT_DIR)
    assert path.name == "step_00000004.pt" and all(torch.isfinite(t).all() for t in flat(state).values()
                                                   if isinstance(t, torch.Tensor) and t.is_floating_point())


def test_a_non_finite_gradient_stops_before_the_update(tmp_path):
    trainer = Trainer(smoke_config("dino"), tmp_path / "run", progress=False)
    trainer.train_step(trainer.batch(0), 0)
    # Student, teacher and optimizer (the DINO center is an EMA of the forward pass, not part of the update;
    # nothing in memory is saved after a stop anyway).
    weights = lambda: {k: v.clone() for k, v in trainer.objective.state_dict().items() if not k.startswith("center.")}
    before_modules = weights()
    before_optim = {k: v.clone() for k, v in flat(trainer.optimizer.state_dict()).items()
                    if isinstance(v, torch.Tensor)}
    trainer.objective.student.backbone.patch_embed.proj.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TrainingStopped, match=r"gradient norm is (nan|inf) at step 1; stopped before the update"):
        trainer.train_step(trainer.batch(1), 1)
    assert_bitwise_equal(before_modules, weights())
    assert_bitwise_equal(before_optim, {k: v for k, v in flat(trainer.optimizer.state_dict()).items()
                                        if isinstance(v, torch.Tensor)})


# ------------------------------------------------------------------------------------------------- collapse
HEALTHY = {"step": 100, "loss": 4.0, "loss_dino": 4.0, "teacher_entropy": 3.0, "teacher_marginal_entropy": 5.0,
           "kl_teacher_student": 0.5, "embed_std": 0.1, "barlow_diag_rms_error": 0.2}


@pytest.mark.parametrize("change,needle", [
    ({"loss_dino": math.log(256)}, "DINO loss sits at ln K"),
    ({"teacher_entropy": 0.0, "teacher_marginal_entropy": 0.0}, "one prototype wins for every image"),
    ({"teacher_entropy": math.log(256)}, "teacher entropy went to ln K"),
    ({"kl_teacher_student": 0.0}, "KL(teacher||student) went to 0"),
    ({"embed_std": 0.001}, "embedding std"),
    ({"barlow_diag_rms_error": 1.0}, "Barlow cross-correlation diagonal"),
])
def test_each_collapse_signal_fires_alone_and_only_after_patience(change, needle):
    bands = dino_collapse_bands(256, loss_key="loss_dino") + barlow_collapse_bands() + [embedding_band(64)]
    monitor = CollapseMonitor(bands, warmup_steps=10, patience=3)
    assert monitor.reasons(HEALTHY) == set()
    bad = {**HEALTHY, **change}
    assert [r for r in monitor.reasons(bad)] and all(needle in r for r in monitor.reasons(bad))
    assert monitor.update({**bad, "step": 5}) == set()  # warm-up
    assert monitor.update(bad) == set() and monitor.update(bad) == set()
    assert needle in " ".join(monitor.update(bad))
    assert monitor.update(HEALTHY) == set()  # a healthy row clears it


def test_a_sharp_teacher_spread_over_prototypes_is_not_a_collapse():
    monitor = CollapseMonitor(dino_collapse_bands(256), warmup_steps=0, patience=1)
    assert monitor.update({**HEALTHY, "teacher_entropy": 0.02}) == set()  # near one-hot per image, many prototypes
    assert monitor.update({**HEALTHY, "teacher_entropy": 0.02, "teacher_marginal_entropy": 0.02}) != set()


def force_collapse(monkeypatch, uniform_prototypes: bool) -> None:
    """Constant embeddings (every image maps to the same point, gradients still flow) and optionally all-zero
    DINO logits (uniform teacher and student)."""
    real_embed = base.embed
    monkeypatch.setattr(base, "embed", lambda backbone, x: real_embed(backbone, x) * 0.0 + 1.0)
    if uniform_prototypes:
        real_forward = dino.DINOHead.forward
        monkeypatch.setattr(dino.DINOHead, "forward", lambda self, x: real_forward(self, x) * 0.0)


def force_teacher_prototypes(monkeypatch, same_for_every_image: bool) -> None:
    """A one-hot teacher (per-image entropy 0) on prototype 0 for every image, or on a different prototype per image
    (a sharp, healthy teacher); the student's head is left as it is, and the center stays at 0 so centering cannot
    undo the forcing."""
    real_forward = DINOHead.forward

    def forward(self, x):
        out = real_forward(self, x)
        if torch.is_grad_enabled():  # the student
            return out
        index = torch.zeros(len(x), dtype=torch.long) if same_for_every_image else torch.arange(len(x))
        return out * 0.0 + 30.0 * torch.nn.functional.one_hot(index % out.shape[-1], out.shape[-1]).to(out.dtype)

    monkeypatch.setattr(DINOHead, "forward", forward)
    monkeypatch.setattr(dino.Center, "update", lambda self, teacher_out: None)


@pytest.mark.parametrize("method", ["dino", "hybrid"])
@pytest.mark.parametrize("same_for_every_image", [True, False])
def test_the_monitor_tells_one_winning_prototype_from_a_sharp_teacher(monkeypatch, tmp_path, method,
                                                                      same_for_every_image):
    force_teacher_prototypes(monkeypatch, same_for_every_image)
    trainer = Trainer(smoke_config(method, epochs=2, max_steps=8), tmp_path / "run", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["teacher_entropy"] < 1e-3 for r in rows)  # one-hot per image either way
    messages = " ".join(str(w.message) for w in caught if "collapse at step" in str(w.message))
    if same_for_every_image:
        assert "one prototype wins for every image" in messages, messages
    else:  # no warning at all; 16 images x 2 global views, each its own prototype: ln 32
        assert messages == ""
        assert all(r["teacher_marginal_entropy"] == pytest.approx(math.log(32), abs=1e-3) for r in rows)


@pytest.mark.parametrize("method,uniform,expected", [
    ("barlow", False, {"embedding std", "Barlow cross-correlation diagonal"}),
    ("hybrid", False, {"embedding std", "Barlow cross-correlation diagonal"}),
    ("dino", True, {"embedding std", "DINO loss sits at ln K", "teacher entropy went to ln K",
                    "KL(teacher||student) went to 0"}),
])
def test_forced_constant_embeddings_make_the_monitor_warn(monkeypatch, tmp_path, method, uniform, expected):
    force_collapse(monkeypatch, uniform)
    trainer = Trainer(smoke_config(method, epochs=2, max_steps=8), tmp_path / "run", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    messages = [str(w.message) for w in caught if "collapse at step" in str(w.message)]
    assert messages and messages[0].startswith("collapse at step 5:")  # 5 rows of patience, then every row
    for needle in expected:
        assert needle in messages[0], (needle, messages[0])
    assert (tmp_path / "run" / "model.safetensors").is_file()  # warning only: the run finished


def test_stop_on_collapse_exits_3_and_keeps_the_checkpoints(monkeypatch, tmp_path, capsys):
    force_collapse(monkeypatch, uniform_prototypes=False)
    out = tmp_path / "run"
    rc = train_main(["--method", "hybrid", "--data", "synthetic:64", "--preset", "smoke", "--device", "cpu",
                     "--epochs", "2", "--max-steps", "8", "--stop-on-collapse", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3
    assert err.startswith("stopped: collapse at step 5: ") and "embedding std" in err and "--stop-on-collapse" in err
    assert [int(p.name[5:13]) for p in list_checkpoints(out / CHECKPOINT_DIR)] == [4, 2]
    assert all(checksum_problem(p) is None for p in list_checkpoints(out / CHECKPOINT_DIR))
    assert not (out / CHECKPOINT_DIR / "step_00000006.pt").exists()


# ------------------------------------------------------------------------------------------------- strangers' files
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw-pickle"])
@pytest.mark.parametrize("name", ["evil.pth", "evil.pt", "model.safetensors"])
def test_load_model_refuses_every_pickle_payload_without_running_it(tmp_path, kind, name):
    marker = tmp_path / "MARKER"
    (tmp_path / name).write_bytes(payload_file(tmp_path, marker, kind))
    with pytest.raises(UserError, match=r"refusing to load|not a readable safetensors") as info:
        load_model(tmp_path / name)
    assert name in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["zip", "legacy", "raw-pickle"])
def test_resume_loader_refuses_a_payload_and_falls_back(smoke_runs, tmp_path, kind):
    run = copy_run(smoke_runs["dino"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    plant(run / CHECKPOINT_DIR, 4, payload_file(tmp_path, marker, kind))
    with pytest.warns(UserWarning, match=r"step_00000004\.pt: refusing to load"):
        path, state = latest_good(run / CHECKPOINT_DIR)
    assert path.name == "step_00000002.pt" and int(state["step"]) == 2
    assert not marker.exists()


def test_train_py_resume_refuses_a_planted_payload_and_the_payload_never_runs(smoke_runs, tmp_path):
    run = copy_run(smoke_runs["dino"], tmp_path / "run")
    marker = tmp_path / "MARKER"
    plant(run / CHECKPOINT_DIR, 4, payload_file(tmp_path, marker, "zip"))
    r = subprocess.run([sys.executable, "train.py", "--out", str(run), "--resume", "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipping checkpoint" in r.stderr and "step_00000004.pt: refusing to load" in r.stderr
    assert not marker.exists()
    # It resumed from step 2 and retrained steps 3-4 into a real checkpoint in place of the payload.
    assert [row["step"] for row in metric_rows(run)] == [1, 2, 3, 4]
    assert int(load_state(run / CHECKPOINT_DIR / "step_00000004.pt")["step"]) == 4


def test_train_py_resume_with_only_a_payload_is_exit_2_and_never_runs_it(smoke_runs, tmp_path, capsys):
    run = tmp_path / "run"
    (run / CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copy(smoke_runs["dino"] / "config.yaml", run / "config.yaml")
    marker = tmp_path / "MARKER"
    plant(run / CHECKPOINT_DIR, 4, payload_file(tmp_path, marker, "zip"))
    with pytest.warns(UserWarning, match=r"step_00000004\.pt: refusing to load"):
        rc = train_main(["--out", str(run), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --resume: no usable checkpoint") and len(err.strip().splitlines()) == 1
    assert not marker.exists() and (run / CHECKPOINT_DIR / "step_00000004.pt").exists()


def test_resume_refuses_a_checkpoint_with_nan_weights_and_falls_back(smoke_runs, tmp_path):
    run = copy_run(smoke_runs["dino"], tmp_path / "run")
    state = load_state(run / CHECKPOINT_DIR / "step_00000004.pt")
    key = next(k for k in state["modules"] if k.endswith("norm.weight"))
    state["modules"][key] = torch.full_like(state["modules"][key], float("nan"))
    buf = tmp_path / "nan.pt"
    torch.save(state, buf)
    plant(run / CHECKPOINT_DIR, 4, buf.read_bytes())
    with pytest.warns(UserWarning, match=rf"step_00000004\.pt: .*NaN or inf.*{key}"):
        trainer = Trainer(run_config(run), run, resume=True, progress=False)
    assert trainer.step == 2
    assert all(torch.isfinite(v).all() for v in trainer.objective.state_dict().values() if v.is_floating_point())


def test_load_model_refuses_nan_and_wrong_shapes_in_pth_files(tmp_path):
    cfg = ModelConfig(arch="vit_small_patch16_224", embed_dim=64, depth=2, num_heads=1, image_size=32, patch_size=8)
    state = create_backbone(cfg).state_dict()
    nan = dict(state, **{"blocks.0.attn.qkv.weight": torch.full_like(state["blocks.0.attn.qkv.weight"], float("inf"))})
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(UserError, match=r"nan\.pth has NaN or inf values in blocks\.0\.attn\.qkv\.weight"):
        load_model(tmp_path / "nan.pth")
    wrong = dict(state, **{"blocks.1.mlp.fc1.weight": torch.zeros(7, 64)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match=r"wrong\.pth don't fit the architecture: 1 of wrong shape "
                                        r"\(e\.g\. blocks\.1\.mlp\.fc1\.weight: \(7, 64\) vs \(256, 64\)\)"):
        load_model(tmp_path / "wrong.pth")


def test_resume_into_a_different_architecture_is_a_clear_error(smoke_runs, tmp_path):
    run = copy_run(smoke_runs["hybrid"], tmp_path / "run")
    before = snapshot(run / CHECKPOINT_DIR)
    with pytest.raises(UserError, match=r"^--resume: checkpoint in .*/run does not fit this config \(.*\); "
                                        r"resume with the run's own config\.yaml$"):
        Trainer(run_config(run, model={"embed_dim": 96}), run, resume=True, progress=False)
    assert snapshot(run / CHECKPOINT_DIR) == before


def test_a_resume_in_another_precision_says_so_in_one_line(smoke_runs, tmp_path):
    run = copy_run(smoke_runs["dino"], tmp_path / "run")
    trained = "bf16" if bool(load_state(list_checkpoints(run / CHECKPOINT_DIR)[-1])["bf16"]) else "fp32"
    other = "fp32" if trained == "bf16" else "bf16"
    with pytest.warns(UserWarning, match=rf"^--resume: .*/run trained in {trained} up to step 4 and goes on in "
                                         rf"{other} \(--precision {other} on this machine\); pass --precision "
                                         rf"{trained} to keep {trained}$"):
        Trainer(run_config(run, precision=other), run, resume=True, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Trainer(run_config(run, precision=trained), run, resume=True, progress=False).step == 4
