"""`python -m dinotwins.bench`: a run's config (preset, --method, --set) timed through the real training step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinotwins.benchmark.cli import bench_config, build_parser
from dinotwins.benchmark.official import match_official
from dinotwins.cpu import torch_threads

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_is_the_bench_preset_and_set_overrides_it():
    cfg = bench_config(build_parser().parse_args([]))
    assert (cfg.method, cfg.batch_size, cfg.model.depth, cfg.model.embed_dim, cfg.augment.n_local) == \
        ("dino", 64, 12, 192, 6)
    assert cfg.objectives["dino"].out_dim == 4096 and cfg.data == "synthetic:64"
    cfg = bench_config(build_parser().parse_args(["--method", "hybrid", "--set", "batch_size=96",
                                                  "--set", "backward_per_resolution=false"]))
    assert (cfg.method, cfg.batch_size, cfg.backward_per_resolution, cfg.data) == ("hybrid", 96, False, "synthetic:96")


def test_the_official_comparison_runs_the_same_objective():
    scenes = bench_config(build_parser().parse_args(["--preset", "scenes"]))
    assert scenes.objectives["ibot"].weight > 0 and scenes.objectives["dino"].koleo_weight > 0
    matched, facts = match_official(scenes)
    assert matched.objectives["ibot"].weight == 0 and matched.objectives["dino"].koleo_weight == 0
    assert facts == {"matched_to_official": "ibot.weight=0, dino.koleo_weight=0"}
    assert matched.model == scenes.model and matched.augment == scenes.augment
    plain = bench_config(build_parser().parse_args([]))
    assert match_official(plain) == (plain, {})


def test_a_short_bench_prints_one_json_row_of_the_config_it_timed():
    r = subprocess.run([sys.executable, "-m", "dinotwins.bench", "--preset", "smoke", "--method", "hybrid",
                        "--set", "precision=fp32", "--set", "backward_per_resolution=false", "--steps", "1",
                        "--warmup", "0", "--profile", "5", "--products", "3", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert (row["method"], row["dtype"], row["backward"], row["batch_size"]) == ("hybrid", "float32", "joint", 16)
    assert row["img_per_s"] > 0 and row["gflop_per_img"] > 0 and row["packed_crops"] is False
    # each step is compared with the roofline of its own round; the limit is the best dtype's, never below the own
    assert 0 < row["fraction_of_limit"] <= row["mfu"] and row["best_peak_tflops"] >= row["peak_tflops"]
    # the step's matmuls, timed alone, carry nearly all of its counted FLOPs (their share of the step's time is a
    # timing against a timing: under a load that starts between the two it may pass 1, so only its sign is checked)
    assert row["matmul_products"] >= row["matmul_shapes"] > 0 and row["matmul_share_of_step"] > 0
    assert 0.9 < row["matmul_flop_share"] <= 1.0 and row["matmul_ceiling"] > 0
    assert "profile: ours (hybrid, torch.float32), 1 steps" in r.stderr and "aten::" in r.stderr
    listed = r.stderr.split("each timed alone")[1].splitlines()[2:5]  # --products 3: three rows after the header
    assert len(listed) == 3 and all(line.rstrip().endswith("float32") for line in listed)


def test_the_patch_embedding_bench_times_both_forms_on_the_same_weights():
    from dinotwins.benchmark.patch_embedding import as_convolution, bench_patch_embedding
    from dinotwins.models.backbone import PatchProjection

    projection = PatchProjection(3, 8, 4, stride=4)
    conv, x = as_convolution(projection), torch.rand(2, 3, 8, 12)
    assert conv.weight is projection.weight and conv.bias is projection.bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(conv(x).float(), projection(x).float(), atol=2e-2)
    cfg = bench_config(build_parser().parse_args(["--preset", "smoke", "--set", "precision=bf16"]))
    row = bench_patch_embedding(cfg, pairs=2, warmup=0, repeats=1)
    assert (row["dtype"], row["patch_embeddings"], row["pairs"]) == ("bfloat16", 2, 2)  # student's and teacher's
    assert all(row[f"layer_{crops}_{form}_ms"] > 0 for crops in ("global", "local") for form in ("matmul", "conv"))
    low, high = row["conv_over_matmul_range"]
    assert row["step_matmul_s_mean"] > 0 and row["step_conv_s_mean"] > 0
    assert low <= row["conv_over_matmul_median"] <= high


@pytest.mark.slow
def test_under_torchrun_one_row_speaks_for_the_group():
    from tests.conftest import torchrun

    r = torchrun("-m", "dinotwins.bench", "--preset", "smoke", "--set", "batch_size=8", "--set", "precision=fp32",
                 "--steps", "2", "--warmup", "1", "--products", "2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and r.stderr.count("each timed alone") == 1  # rank 0 alone prints
    row = json.loads(rows[0])
    # the group's images per step and FLOPs, against the peak both processes measured side by side
    assert (row["processes"], row["threads"], row["batch_size"]) == (2, 1, 16)
    assert row["img_per_s"] == pytest.approx(16 / row["step_s"], rel=0.01)
    assert 0 < row["fraction_of_limit"] <= 1 and row["matmul_flop_share"] > 0.9


def test_packed_crops_auto_reports_its_choice():
    r = subprocess.run([sys.executable, "-m", "dinotwins.bench", "--preset", "smoke", "--set", "packed_crops=auto",
                        "--steps", "1", "--warmup", "0", "--json"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["packed_crops"] in ("auto (True)", "auto (False)")


def test_a_bad_bench_flag_is_one_line():
    r = subprocess.run([sys.executable, "-m", "dinotwins.bench", "--set", "attention=sometimes"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: attention must be") and r.stderr.count("\n") == 1


def test_auto_precision_follows_a_timing_not_only_the_cpu_flags(monkeypatch):
    from dinotwins.training import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    for speedup, expected in ((5.0, torch.bfloat16), (1.1, None), (1 / 30, None)):
        precision.forget_timing()
        monkeypatch.setattr(precision, "bf16_matmul_speedup", lambda *args, **kwargs: speedup)
        assert precision.pick_precision("auto", cpu) is expected
        assert precision.pick_precision("bf16", cpu) is torch.bfloat16 and precision.pick_precision("fp32", cpu) is None
    precision.forget_timing()


def test_the_bf16_speedup_is_fp32s_best_interleaved_time_over_bf16s(monkeypatch):
    from dinotwins.training import precision

    asked = []
    def best(candidates, rounds, **kwargs):
        asked.append((list(candidates), rounds, kwargs, torch.get_num_threads()))
        for run in candidates.values():
            assert len(run()) == 4  # each candidate is the repeated product itself
        return {torch.float32: 1.0, torch.bfloat16: 0.4}
    monkeypatch.setattr(precision, "best_seconds", best)
    with torch_threads(2):
        assert precision.bf16_matmul_speedup(n=8) == pytest.approx(2.5)
        # timed on one thread (a busy machine's thread stalls cannot flip it), the caller's threads given back
        assert asked == [([torch.float32, torch.bfloat16], 5, {"warmup": 1}, 1)] and torch.get_num_threads() == 2


def test_the_limit_is_read_from_every_native_dtype_and_never_from_an_emulated_one_alone(monkeypatch):
    from dinotwins.benchmark import step
    cpu = torch.device("cpu")
    monkeypatch.setattr(step, "pick_precision", lambda precision, device: torch.float32)  # bf16 emulated
    assert step.roofline_dtypes(torch.float32, cpu) == [torch.float32]
    assert step.roofline_dtypes(torch.bfloat16, cpu) == [torch.bfloat16, torch.float32]
    monkeypatch.setattr(step, "pick_precision", lambda precision, device: torch.bfloat16)  # bf16 native
    assert step.roofline_dtypes(torch.float32, cpu) == [torch.float32, torch.bfloat16]
    assert step.roofline_dtypes(torch.bfloat16, cpu) == [torch.bfloat16, torch.float32]


def test_libraries_capped_to_avx2_run_fp32_and_the_bench_says_so():
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    r = subprocess.run([sys.executable, "-m", "dinotwins.bench", "--preset", "smoke", "--steps", "1", "--warmup", "0",
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **caps})
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["dtype"] == "float32" and row["cpu_isa"]["onednn_max"] == "AVX2"
    assert row["cpu_isa"]["aten"] in ("AVX2", "DEFAULT")  # DEFAULT on a CPU without AVX2


def test_the_ceiling_records_each_product_of_forward_and_backward_with_its_layout():
    from dinotwins.benchmark.ceiling import RecordProducts, matmul_ceiling

    layer = torch.nn.Linear(32, 48)
    x, weights = torch.randn(8, 32, requires_grad=True), torch.randn(8, 48)
    with RecordProducts() as rec:
        (layer(x) * weights).sum().backward()
        torch.bmm(torch.randn(2, 5, 7), torch.randn(2, 7, 3))
    products = {(p.a_shape, p.b_shape): (p, n) for p, n in rec.counts.items()}
    # forward addmm, then the input's and the weight's gradients (a transposed operand each), then the bmm
    assert set(products) == {((8, 32), (32, 48)), ((8, 48), (48, 32)), ((48, 8), (8, 32)), ((2, 5, 7), (2, 7, 3))}
    assert products[((48, 8), (8, 32))][0].a_stride == (1, 48)  # the transposed gradient as it ran, not a copy
    assert sum(p.flops * n for p, n in rec.counts.items()) == 3 * 2 * 8 * 32 * 48 + 2 * 2 * 5 * 7 * 3
    ceiling = matmul_ceiling(rec.counts, torch.device("cpu"), step_seconds=1e9, peak_tflops=lambda: 1e-9, rounds=1)
    flops = ceiling["matmul_gflop_per_step"] * 1e9
    assert ceiling["matmul_products"] == 4 and ceiling["matmul_shapes"] == 4
    # a fraction of the given peak: the FLOPs over the products' own solo time
    assert ceiling["matmul_ceiling"] == pytest.approx(flops / ceiling["matmul_solo_s"] / 1e12 / 1e-9, rel=0.02)


def test_the_slowest_products_come_first_with_their_layout():
    from collections import Counter

    from dinotwins.benchmark.ceiling import Product, slowest_products

    big = Product((512, 512), (512, 1), (512, 512), (1, 512), torch.float32)  # B transposed
    small = Product((4, 8), (8, 1), (8, 4), (4, 1), torch.float32)
    lines = slowest_products(Counter({small: 3, big: 2}), torch.device("cpu"), peak_tflops=1.0, rows=1)
    assert len(lines) == 2 and "A shape" in lines[0]  # a header, then only the slowest product
    share, speed, transposed, calls, rest = lines[1].split(maxsplit=4)
    assert calls == "2" and rest == "(512, 512) ((512, 1)) x (512, 512) ((1, 512)) float32"
    assert 95 < float(share.rstrip("%")) <= 100 and float(speed.rstrip("%")) > 0 and float(transposed.rstrip("%")) > 0


def test_a_product_transposed_computes_the_transposed_result_at_the_same_cost():
    from dinotwins.benchmark.ceiling import Product, _operand

    for p in (Product((6, 4), (1, 6), (4, 5), (5, 1), torch.float32),  # A transposed, as a weight gradient runs
              Product((3, 6, 4), (24, 4, 1), (3, 4, 5), (20, 1, 4), torch.float32)):  # batched, B transposed
        q = p.transposed()
        assert q.flops == p.flops and q.transposed() == p
        a, b = _operand(p.a_shape, p.a_stride, p.dtype, torch.device("cpu")), \
            _operand(p.b_shape, p.b_stride, p.dtype, torch.device("cpu"))
        # the transposed operands are views of the same storage in the layout q names
        at, bt = a.transpose(-2, -1), b.transpose(-2, -1)
        assert (bt.shape, bt.stride(), at.shape, at.stride()) == (q.a_shape, q.a_stride, q.b_shape, q.b_stride)
        assert torch.allclose(torch.matmul(bt, at).transpose(-2, -1), torch.matmul(a, b), atol=1e-5)


def test_the_cpu_is_named_with_its_family_and_model_and_the_flags_that_pick_the_dtype(tmp_path):
    from dinotwins.cpu import cpu_description, cpu_has_native_bf16

    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n" \
            "flags\t\t: fpu avx2 avx512f avx512_bf16 sse4_2\n"
    info = tmp_path / "cpuinfo"
    info.write_text(block.format(0) + "\n" + block.format(1).replace("model\t\t: 17", "model\t\t: 99"))
    described = cpu_description(info)
    assert described["cpu"] == "AMD EPYC (family 25 model 17)"  # the first processor's, not the last one's
    assert described["cpu_flags"] == ["avx2", "avx512f", "avx512_bf16"]
    assert cpu_description(tmp_path / "absent")["cpu"] == "unknown"
    # the training's bf16 choice reads the same flags: AVX512-BF16 or AMX count, AVX2 alone or no file does not
    assert cpu_has_native_bf16(info)
    info.write_text(block.format(0).replace(" avx512f avx512_bf16", ""))
    assert not cpu_has_native_bf16(info) and not cpu_has_native_bf16(tmp_path / "absent")
    info.write_text(block.format(0).replace("avx512_bf16", "amx_bf16"))
    assert cpu_has_native_bf16(info)
