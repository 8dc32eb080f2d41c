"""--init-from: a run that starts from another run's modules at a larger image size (DINOv2's high-resolution phase)."""

import pytest
import torch
import yaml
from timm.layers import resample_abs_pos_embed

from dinotwins.config import build_config, load_preset, merge
from dinotwins.training.checkpoint import latest_good
from dinotwins.training.trainer import Trainer
from dinotwins.training.warm_start import resized_pos_embed
from tests.test_train_cli import run_train


def test_resized_pos_embed_keeps_the_prefix_and_resamples_the_grid():
    pos = torch.randn(1, 2 + 16, 8)  # CLS and one register, then 4 x 4 patches
    out = resized_pos_embed(pos, torch.Size([1, 2 + 36, 8]), prefix=2)
    assert out.shape == (1, 38, 8)
    assert torch.equal(out[:, :2], pos[:, :2])
    assert torch.allclose(out, resample_abs_pos_embed(pos, new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=2))
    assert resized_pos_embed(pos, pos.shape, prefix=2) is pos
    # a ramp along the grid's columns stays one: negative at the left edge, positive at the right, every row alike
    ramp = torch.linspace(-1, 1, 4).repeat(4).view(1, 16, 1)
    big = resized_pos_embed(ramp, torch.Size([1, 64, 1]), prefix=0).view(8, 8)
    assert big[0, 0] < 0 < big[0, -1] and torch.allclose(big[0], big[-1])


def smoke(method: str, image_size: int, **extra) -> dict:
    data = merge(load_preset("smoke"), {"method": method, "data": "synthetic:64", "model": {"image_size": image_size},
                                        "augment": {"global_size": image_size}})
    return merge(data, extra)


@pytest.mark.parametrize("method", ["dino", "hybrid"])
def test_init_from_loads_every_module_and_resizes_position_embeddings(tmp_path, method):
    source = tmp_path / "source"
    Trainer(build_config(smoke(method, 32)), source, progress=False).run()
    _, state = latest_good(source / "checkpoints")
    trained = state["modules"]

    cfg = build_config(smoke(method, 48, init_from=str(source)))
    trainer = Trainer(cfg, tmp_path / "high", progress=False)
    assert trainer.step == 0  # its own schedules, from the start
    assert not trainer.optimizer.state  # a fresh optimizer
    loaded = trainer.objective.state_dict()
    assert loaded.keys() == trained.keys()
    resized = [k for k in loaded if k.endswith("pos_embed")]
    assert {k.split(".")[0] for k in resized} >= {"student", "teacher"}
    for key in loaded:
        if key in resized:
            assert loaded[key].shape == (1, 1 + 12 * 12, 48) and trained[key].shape == (1, 1 + 8 * 8, 48)
            assert torch.equal(loaded[key][:, 0], trained[key][:, 0])  # CLS position unchanged
        else:
            assert torch.equal(loaded[key], trained[key]), key
    assert yaml.safe_load((tmp_path / "high" / "config.yaml").read_text())["init_from"] == str(source)
    trainer.run()  # and it trains at the new size
    assert (tmp_path / "high" / "model.safetensors").is_file()


def test_a_resumed_warm_started_run_goes_on_from_its_own_checkpoint(tmp_path):
    source, high = tmp_path / "source", tmp_path / "high"
    Trainer(build_config(smoke("dino", 32)), source, progress=False).run()
    Trainer(build_config(smoke("dino", 48, init_from=str(source), max_steps=2)), high, progress=False).run()
    _, own = latest_good(high / "checkpoints")
    resumed = Trainer(build_config(smoke("dino", 48, init_from=str(source), max_steps=4)), high, resume=True,
                      progress=False)
    assert resumed.step == 2
    assert all(torch.equal(v, own["modules"][k]) for k, v in resumed.objective.state_dict().items())


def test_init_from_bad_sources_are_one_line_and_write_nothing(tmp_path):
    source = tmp_path / "barlow"
    assert run_train("--method", "barlow", "--data", "synthetic:64", "--preset", "smoke", "--out", source,
                     "--no-progress").returncode == 0
    (tmp_path / "empty").mkdir()
    for init, needle in [(tmp_path / "nowhere", "not a run folder"), (tmp_path / "empty", "no usable checkpoint"),
                         (source, "do not fit this run")]:
        out = tmp_path / "run"
        r = run_train("--method", "dino", "--data", "synthetic:64", "--preset", "smoke", "--init-from", init,
                      "--out", out)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
        assert not out.exists()
