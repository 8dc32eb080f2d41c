"""Embedding health, the feature cache, `evaluate_model` and the `python -m dinotwins.evaluate` command."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from dinotwins import LoadedModel
from dinotwins.models.backbone import create_backbone
from dinotwins.models.config import ModelConfig
from dinotwins.data import load_dataset
from dinotwins.evaluation import features as features_module
from dinotwins.evaluation import rows as rows_module
from dinotwins.evaluation.cli import distinct_names, main
from dinotwins.evaluation.embedding_health import effective_rank, embedding_std
from dinotwins.evaluation.features import extract_features, feature_cache_key
from dinotwins.evaluation.rows import COLUMNS, evaluate_model, limit_dataset

TINY = ModelConfig(embed_dim=24, depth=1, num_heads=3, image_size=16, patch_size=4, drop_path_rate=0.0)


# ------------------------------------------------------------------------------------------------ embedding health
def test_effective_rank_of_d_equal_orthogonal_directions_is_d():
    d = 8
    plus_minus_basis = np.vstack([np.eye(d), -np.eye(d)])  # centered already; all singular values sqrt(2)
    assert effective_rank(plus_minus_basis) == pytest.approx(d)


def test_effective_rank_of_a_rank_one_matrix_is_one_and_of_one_repeated_point_zero():
    rng = np.random.default_rng(0)
    rank_one = rng.normal(size=(100, 1)) * rng.normal(size=(1, 32))
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(np.tile(rng.normal(size=(1, 32)), (50, 1))) == 0.0


def test_embedding_std_is_about_one_over_sqrt_d_when_spread_and_zero_when_collapsed():
    d = 64
    spread = np.random.default_rng(0).normal(size=(5000, d))
    assert embedding_std(spread) == pytest.approx(1 / np.sqrt(d), rel=0.05)
    assert embedding_std(np.tile(spread[:1] * 7, (100, 1))) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ feature cache
@pytest.fixture()
def tiny_model() -> LoadedModel:
    return LoadedModel(create_backbone(TINY), TINY, name="tiny", metadata={}, weights_hash="tiny-test-weights")


@pytest.fixture()
def tiny_data():
    return load_dataset("synthetic:8", "train", image_size=16)


def _forbid_recompute(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed instead of read from the cache")
    monkeypatch.setattr(features_module, "compute_features", fail)


def test_embed_batch_holds_only_its_own_rows(tiny_model):
    """A kept batch of embeddings must not keep the model's whole token output alive (an extraction keeps a
    shard's batches: the token outputs held GBs)."""
    import torch

    x = torch.randn(4, 3, 16, 16)
    out = features_module.embed_batch(tiny_model, x)
    assert out.shape == (4, 24) and out.flags["C_CONTIGUOUS"]
    owner = out.base
    assert owner is None or owner.untyped_storage().nbytes() == out.nbytes


def test_feature_cache_returns_identical_arrays_on_the_second_call(tiny_model, tiny_data, tmp_path, monkeypatch):
    first = extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False)
    assert first.shape == (8, 24) and first.dtype == np.float32
    assert len(list(tmp_path.glob("*.npy"))) == 1
    _forbid_recompute(monkeypatch)
    assert np.array_equal(extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False), first)


def test_feature_cache_rebuilds_a_corrupted_file(tiny_model, tiny_data, tmp_path):
    first = extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False)
    path = next(tmp_path.glob("*.npy"))
    data = bytearray(path.read_bytes())
    data[-5:] = b"\xff" * 5  # flipped bytes in the array itself: np.load alone would not notice
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unusable"):
        again = extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False)
    assert np.array_equal(again, first)
    path.write_bytes(b"not an npy file")
    with pytest.warns(UserWarning, match="unusable"):
        assert np.array_equal(extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False), first)


def test_feature_cache_rebuilds_a_file_of_the_wrong_shape(tiny_model, tiny_data, tmp_path):
    first = extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False)
    path = next(tmp_path.glob("*.npy"))
    features_module._write_cached(path, np.zeros((3, 24), np.float32))  # well-formed, checksum fine, wrong shape
    with pytest.warns(UserWarning, match="expected float32"):
        assert np.array_equal(extract_features(tiny_model, tiny_data, cache_dir=tmp_path, progress=False), first)


def test_feature_cache_key_changes_with_the_subset_and_the_weights(tiny_model, tiny_data):
    key = feature_cache_key(tiny_model, tiny_data)
    assert feature_cache_key(tiny_model, limit_dataset(tiny_data, 4, seed=0)) != key
    other = LoadedModel(create_backbone(TINY), TINY, name="tiny", metadata={}, weights_hash="other-weights")
    assert feature_cache_key(other, tiny_data) != key
    assert feature_cache_key(tiny_model, load_dataset("synthetic:8", "train", image_size=16)) == key


# ------------------------------------------------------------------------------------------------ evaluate_model
def test_evaluate_model_row_and_attention_regenerated_at_the_model_size(tiny_model, tmp_path, monkeypatch):
    train = load_dataset("synthetic:64", "train", image_size=8)  # stored smaller than the model's 16 px
    test = limit_dataset(load_dataset("synthetic:64", "test", image_size=8), 20, seed=0)
    loads = []

    def spy(spec, split, *, image_size):
        loads.append((spec, split, image_size))
        return load_dataset(spec, split, image_size=image_size)
    monkeypatch.setattr(rows_module, "load_dataset", spy)
    row = evaluate_model(tiny_model, train, test, k=5, temperature=0.07, label_fraction=0.5, seed=0,
                         cache_dir=tmp_path)
    assert loads == [("synthetic:64", "test", 16)]  # the attention masks come from 16 px synthetic images
    assert tuple(row) == COLUMNS
    assert (row["num_train"], row["num_test"]) == (64, 20)
    for key in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "attn_jaccard_mean_heads", "patch_fg_iou"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["attn_jaccard_mean_heads"] <= 1.0 and row["attn_jaccard_best_head"] >= 0.0
    assert 1.0 <= row["effective_rank"] <= 20 and row["embedding_std"] > 0


def test_data_without_masks_scores_attention_on_synthetic_at_the_model_size(tiny_model, monkeypatch):
    test = dataclasses.replace(load_dataset("synthetic:64", "test", image_size=16), masks=None)
    loads = []

    def spy(spec, split, *, image_size):
        loads.append((spec, split, image_size))
        return load_dataset("synthetic:64", split, image_size=image_size)  # small stand-in for the full split
    monkeypatch.setattr(rows_module, "load_dataset", spy)
    scores = rows_module.attention_scores(tiny_model, test)
    assert loads == [("synthetic", "test", 16)]
    assert tuple(scores) == rows_module.ATTENTION_KEYS
    slope = scores.pop("attn_follows_object")  # a slope: a random model's may be a little below 0
    assert all(0.0 <= value <= 1.0 for value in scores.values()) and -1.0 < slope < 1.0
    assert rows_module.foreground_probe_score(tiny_model, test, test) is None  # the probe needs the data's masks


def test_attention_scores_read_the_block_asked_for_and_the_last_by_default():
    config = dataclasses.replace(TINY, depth=2)
    model = LoadedModel(create_backbone(config), config, name="two blocks", metadata={}, weights_hash="two-blocks")
    test = load_dataset("synthetic:64", "test", image_size=16)
    last, second, first = (rows_module.attention_scores(model, test, layer=layer) for layer in (0, 2, 1))
    assert last == second  # 0 means the last block, here the second
    assert first["attn_on_object"] != last["attn_on_object"]  # the first block's maps are other maps
    assert first["object_area"] == last["object_area"]  # on the same masks


def test_models_of_two_shapes_get_a_random_init_baseline_each_named_by_its_shape(tiny_model, tmp_path):
    deeper_config = dataclasses.replace(TINY, depth=TINY.depth + 1)
    deeper = LoadedModel(create_backbone(deeper_config), deeper_config, name="deeper", metadata={},
                         weights_hash="deeper-test-weights")
    dropping_config = dataclasses.replace(TINY, drop_path_rate=0.1)  # the same weights' shape: no third row
    dropping = LoadedModel(create_backbone(dropping_config), dropping_config, name="dropping", metadata={},
                           weights_hash="dropping-test-weights")
    data = load_dataset("synthetic:32", "train", image_size=16)
    rows = rows_module.evaluate_all([tiny_model, deeper, dropping], data, data, k=5, cache_dir=tmp_path)
    names = [row["model"] for row in rows]
    assert names[:4] == ["tiny", "deeper", "dropping", "raw pixels"] and len(names) == 8
    assert f"{TINY.depth} blocks" in names[4] and f"{TINY.depth + 1} blocks" in names[5]
    assert names[6:] == [rows_module.object_maps_name(16, 4), rows_module.prior_maps_name(16, 4)]  # one grid


def test_random_init_rows_tell_registers_and_no_position_embedding_apart(tiny_model):
    names = {LoadedModel.random_like(tiny_model).name}
    for change in (dict(reg_tokens=2), dict(pos_embed="none")):
        config = dataclasses.replace(TINY, **change)
        other = LoadedModel(create_backbone(config), config, name="other", metadata={}, weights_hash=str(change))
        names.add(LoadedModel.random_like(other).name)
    assert len(names) == 3 and any("2 registers" in n for n in names) and any("no position" in n for n in names)


def test_a_models_own_mean_map_row_draws_its_maps_average_for_every_image(tiny_model, tmp_path):
    data = load_dataset("synthetic:32", "train", image_size=16)
    rows = rows_module.evaluate_all([tiny_model], data, data, k=5, baselines=False, own_mean_maps=True,
                                    cache_dir=tmp_path)
    model, own = rows
    assert own["model"] == rows_module.own_mean_map_name("tiny") and own["knn_top1"] is None
    assert own["num_test"] == len(data) and own["object_area"] == model["object_area"]
    assert abs(own["attn_follows_object"]) < 1e-9  # the same map for every image moves with nothing
    maps, _ = rows_module.attention_maps(tiny_model, data)
    mean = maps / maps.sum(dim=(-2, -1), keepdim=True)
    drawn = mean.mean(dim=(0, 1)).expand(len(data), 1, *maps.shape[-2:])
    assert own["attn_on_object"] == pytest.approx(rows_module.map_scores(drawn, data.masks)["attn_on_object"])
    assert own["attn_on_object"] != pytest.approx(model["attn_on_object"])  # its own maps differ per image


def test_the_random_init_row_is_the_mean_of_its_seeds(tiny_model, tmp_path):
    data = load_dataset("synthetic:32", "train", image_size=16)
    rows = rows_module.evaluate_all([tiny_model], data, data, k=5, seed=3, random_inits=2, cache_dir=tmp_path)
    seeded = [rows_module.evaluate_model(LoadedModel.random_like(tiny_model, seed=s), data, data, k=5, seed=3,
                                         cache_dir=tmp_path) for s in (3, 4)]
    row = rows[2]
    assert row["model"] == f"{seeded[0]['model']}, mean of 2 seeds"
    assert seeded[0]["attn_jaccard_mean_heads"] != seeded[1]["attn_jaccard_mean_heads"]  # the seeds differ
    for key in ("knn_top1", "attn_jaccard_mean_heads", "attn_mask_area", "effective_rank"):
        assert row[key] == pytest.approx((seeded[0][key] + seeded[1][key]) / 2), key
    assert row["num_train"] == len(data) and row["object_area"] == seeded[0]["object_area"]


# ------------------------------------------------------------------------------------------------ command line
def test_cli_json_has_a_row_per_model_and_the_baselines(smoke_runs, tmp_path, capsys):
    args = [str(smoke_runs["dino"]), str(smoke_runs["barlow"] / "model.safetensors"), "--data", "synthetic:64",
            "--json", "--cache-dir", str(tmp_path), "--no-progress", "--limit-train", "48", "--k", "10"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in rows][:3] == ["dino", "barlow", "raw pixels"]
    assert rows[3]["model"].startswith("random-init") and len(rows) == 6  # both models share one shape
    prior = rows.pop()  # the train objects' mean mask as every map: blind to the image, it follows nothing
    ideal = rows.pop()  # the object masks as maps: attention columns alone, at the top of them
    assert ideal["model"].startswith("object masks as maps") and ideal["knn_top1"] is None
    assert prior["model"].startswith("mean train object") and prior["knn_top1"] is None
    assert ideal["object_area"] == prior["object_area"] == rows[0]["object_area"] and ideal["num_test"] == 64
    for key in ("attn_jaccard_mean_heads", "attn_on_object", "attn_follows_object"):
        assert ideal[key] > max(row[key] for i, row in enumerate(rows) if i != 2)
    assert ideal["attn_follows_object"] > 0.8 and abs(prior["attn_follows_object"]) < 1e-9
    for row in rows:
        assert tuple(row) == COLUMNS
        assert (row["num_train"], row["num_test"]) == (48, 64)
        assert 0.0 <= row["knn_top1"] <= row["knn_top5"] <= 1.0
        assert 0.0 <= row["linear_top1"] <= row["linear_top5"] <= 1.0
    assert all(rows[2][key] is None for key in (*rows_module.ATTENTION_KEYS, "patch_fg_iou"))
    assert all(0.0 <= rows[i]["attn_jaccard_mean_heads"] <= 1.0 for i in (0, 1, 3))
    assert len({rows[i]["object_area"] for i in (0, 1, 3)}) == 1  # the same masks for every model
    assert main(args) == 0  # second run reads the cache and prints the same figures
    assert json.loads(capsys.readouterr().out) == [*rows, ideal, prior]


def test_cli_markdown_table_without_baselines(smoke_runs, tmp_path, capsys):
    args = [str(smoke_runs["hybrid"]), "--data", "synthetic:64", "--markdown", "--no-baselines",
            "--cache-dir", str(tmp_path), "--no-progress", "--limit-test", "16"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("| model | k-NN top-1") and lines[2].startswith("| hybrid |")


@pytest.mark.parametrize("extra, message", [
    (["--data", "nonsense:x"], "unknown data spec"),
    (["--data", "synthetic:64", "--label-fraction", "0"], "--label-fraction"),
    (["--data", "synthetic:64", "--label-fraction", "1.5"], "--label-fraction"),
    (["--data", "synthetic:64", "--k", "0"], "--k"),
    (["--data", "synthetic:64", "--json", "--markdown"], "not allowed with"),
    (["--data", "synthetic:64", "--attention-layer", "-1"], "--attention-layer must be a block number"),
    (["--data", "synthetic:64", "--attention-layer", "99"], "blocks; pick 1 to"),
    (["--data", "synthetic:64", "--random-inits", "0"], "--random-inits must be at least 1"),
])
def test_cli_user_errors_are_one_line_and_exit_2(smoke_runs, tmp_path, capsys, extra, message):
    assert main([str(smoke_runs["dino"]), "--cache-dir", str(tmp_path), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err and captured.err.count("\n") == 1


def test_cli_missing_model_is_a_user_error(tmp_path, capsys):
    assert main([str(tmp_path / "no-such-run"), "--data", "synthetic:64"]) == 2
    assert capsys.readouterr().err.startswith("error: model ")


@pytest.mark.slow
def test_module_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dinotwins.evaluate", str(tmp_path / "missing"), "--data",
                             "synthetic:64"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_models_that_share_a_name_are_told_apart_by_their_paths():
    names = ["step_00001000", "step_00001000", "model", "dino"]
    paths = ["runs/a/exports/step_00001000.safetensors", "runs/b/exports/step_00001000.safetensors",
             "x/model.pth", "assets/models/dino"]
    assert distinct_names(names, paths) == ["a/exports/step_00001000", "b/exports/step_00001000", "model", "dino"]
    assert distinct_names(["r", "r"], ["one/r", "two/r"]) == ["one/r", "two/r"]
