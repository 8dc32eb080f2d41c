"""Speed never changes the maths: the fast path (bf16 autocast, explicit attention on CPU) computes the same loss
and the same update direction as the plain fp32 path with timm's fused attention, within bf16 tolerance."""

import pytest

from dinotwins.objectives import METHODS
from dinotwins.training.trainer import Trainer
from tests.conftest import smoke_config


def first_step(tmp_path, method: str, precision: str, attention: str) -> dict:
    """The logged values of step 0 (loss terms before the update, gradient norm) from fresh identical weights."""
    cfg = smoke_config(method, precision=precision, attention=attention, seed=3)
    trainer = Trainer(cfg, tmp_path / f"{method}-{precision}-{attention}", progress=False)
    return trainer.train_step(trainer.batch(0), 0)


@pytest.mark.parametrize("method", METHODS)
def test_explicit_attention_gives_the_fused_loss_and_gradient_in_fp32(tmp_path, method):
    fused = first_step(tmp_path, method, "fp32", "fused")
    explicit = first_step(tmp_path, method, "fp32", "explicit")
    assert explicit["loss"] == pytest.approx(fused["loss"], rel=1e-5)
    assert explicit["grad_norm"] == pytest.approx(fused["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_fast_path_matches_the_fp32_loss_and_gradient_within_bf16_tolerance(tmp_path, method):
    plain = first_step(tmp_path, method, "fp32", "fused")
    fast = first_step(tmp_path, method, "bf16", "explicit")
    # bf16 keeps 8 bits of mantissa (a relative step of 0.4 %); sums over many terms stay well inside 2 %.
    assert fast["loss"] == pytest.approx(plain["loss"], rel=2e-2)
    for key in ("loss_dino", "loss_barlow"):
        assert (key in fast) == (key in plain)
        if key in plain:
            assert fast[key] == pytest.approx(plain[key], rel=2e-2), key
    assert fast["grad_norm"] == pytest.approx(plain["grad_norm"], rel=5e-2)


@pytest.mark.slow
def test_compiled_step_gives_the_eager_loss_and_gradient(tmp_path):
    """torch.compile'd student and teacher (one static graph per crop size) against the eager step, fp32."""
    eager = first_step(tmp_path, "hybrid", "fp32", "explicit")
    cfg = smoke_config("hybrid", precision="fp32", attention="explicit", seed=3, compile=True)
    trainer = Trainer(cfg, tmp_path / "compiled", progress=False)
    compiled = trainer.train_step(trainer.batch(0), 0)
    for key in ("loss", "loss_dino", "loss_barlow"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4), key
    assert compiled["grad_norm"] == pytest.approx(eager["grad_norm"], rel=1e-3)


def test_compile_mode_reaches_torch_compile_and_cuda_graph_modes_mark_each_step(tmp_path, monkeypatch):
    """`compile_mode` is handed to torch.compile for student and teacher; a mode that replays CUDA graphs tells
    them each step begins (without it a replay could overwrite outputs the step still reads)."""
    modes, marks = [], []

    def record(module, **kwargs):
        modes.append(kwargs["mode"])
        return module  # eager: the test checks the plumbing, not the compiler

    monkeypatch.setattr("torch.compile", record)
    monkeypatch.setattr("torch.compiler.cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode, graphed in (("default", False), ("reduce-overhead", True)):
        modes.clear()
        marks.clear()
        cfg = smoke_config("dino", precision="fp32", attention="explicit", compile=True, compile_mode=mode)
        trainer = Trainer(cfg, tmp_path / mode, progress=False)
        trainer.train_step(trainer.batch(0), 0)
        trainer.train_step(trainer.batch(1), 1)
        assert modes == [mode, mode]
        assert len(marks) == (2 if graphed else 0)
