"""Collections: extraction into verified shards (one process, two under torchrun, killed and resumed), the index
chosen by size, tuned to its recall target and memory-mapped, and every way a folder can be wrong."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dinotwins.collection import index as index_module
from dinotwins.collection.extract import extract
from dinotwins.collection.shards import (Collection, Manifest, read_manifest, shard_files, shard_problem,
                                         write_manifest, write_shard)
from dinotwins.data import load_dataset
from dinotwins.errors import UserError
from dinotwins.models.load import load_model
from tests.conftest import torchrun

ROOT = Path(__file__).resolve().parents[1]


def run_extract(model, out, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "dinotwins.extract", str(model), "--data", "synthetic:1200",
                             "--out", str(out), "--shard-size", "100", "--batch-size", "50", "--no-progress",
                             *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard_*"))}


@pytest.fixture(scope="module")
def one_process(smoke_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract") / "one"
    model = load_model(smoke_runs["dino"])
    extract(model, load_dataset("synthetic:1200", "train", image_size=model.image_size), out, shard_size=100,
            batch_size=50, progress=False)
    return out


def test_an_extraction_holds_every_image_once_with_its_label(one_process):
    collection = Collection(one_process, full_check=True)
    data = load_dataset("synthetic:1200", "train", image_size=32)
    assert len(collection) == 1200 and collection.manifest.shards == 12 and collection.manifest.complete
    assert np.array_equal(collection.labels, data.labels.numpy())
    ids = np.concatenate([np.load(shard_files(one_process, k)["ids"]) for k in range(12)])
    assert np.array_equal(ids, np.arange(1200))
    assert collection.vectors(95, 105).shape == (10, collection.dim)  # across a shard boundary
    assert np.allclose(collection.take(np.array([99, 100])), collection.vectors(99, 101))


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_same_shards_as_one(smoke_runs, one_process, tmp_path):
    out = tmp_path / "two"
    result = torchrun("-m", "dinotwins.extract", str(smoke_runs["dino"]), "--data", "synthetic:1200", "--out", str(out),
                      "--shard-size", "100", "--batch-size", "50", "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    mine, theirs = shard_bytes(one_process), shard_bytes(out)
    ours = {k: v for k, v in mine.items() if not k.endswith(".json") and "json" not in k}
    assert ours == {k: v for k, v in theirs.items() if k in ours}  # embeddings, ids, labels and their records


@pytest.mark.slow
def test_a_killed_extraction_resumes_to_the_same_result_without_rewriting_a_shard(smoke_runs, one_process, tmp_path):
    out = tmp_path / "killed"
    process = run_extract(smoke_runs["dino"], out)
    deadline = time.time() + 300
    while not (out / "shard_00003.json.sha256").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # a shard is done once every file matches its record: the kill may land between a file and its record
    manifest = read_manifest(out)
    done = [k for k in range(manifest.shards) if shard_problem(out, manifest, k) is None]
    kept = {p.name: p.stat().st_mtime_ns for k in done for p in shard_files(out, k).values() if p.suffix == ".npy"}
    assert 4 <= len(done) < 12  # some shards done, not all (a shard cut mid-write is redone, its parts rewritten)
    (out / "shard_00011.npy").write_bytes(b"half a shard")  # and one left half-written
    rerun = run_extract(smoke_runs["dino"], out)
    assert rerun.wait(timeout=600) == 0, rerun.stderr.read()[-2000:]
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.glob("shard_*.npy")) if n in kept} == kept
    strip = lambda d: {k: v for k, v in d.items() if "json" not in k}  # noqa: E731 - the extraction ids differ
    assert strip(shard_bytes(out)) == strip(shard_bytes(one_process))


def test_a_resumed_extraction_computes_in_the_precision_it_began_with(smoke_runs, tmp_path, monkeypatch):
    from dinotwins.training import precision

    model = load_model(smoke_runs["dino"])
    data = load_dataset("synthetic:300", "train", image_size=model.image_size)
    monkeypatch.setattr(precision, "_bf16_fast", True)  # the first part's timing: bf16 is the faster here
    assert extract(model, data, tmp_path, shard_size=100, progress=False).precision == "bf16"
    lost = shard_files(tmp_path, 1)["embeddings"]
    before = lost.read_bytes()
    lost.unlink()
    monkeypatch.setattr(precision, "_bf16_fast", False)  # the resume's timing says fp32
    assert extract(model, data, tmp_path, shard_size=100, progress=False).precision == "bf16"
    assert lost.read_bytes() == before  # recomputed in bf16, as its neighbours were


def test_a_folder_of_another_extraction_is_refused_in_one_line(smoke_runs, one_process):
    model = load_model(smoke_runs["barlow"])
    with pytest.raises(UserError, match="holds an extraction of dino"):
        extract(model, load_dataset("synthetic:1200", "train", image_size=32), one_process, shard_size=100,
                progress=False)


def test_missing_truncated_and_foreign_shards_are_named(one_process, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(one_process, broken)
    files = shard_files(broken, 4)
    files["embeddings"].write_bytes(files["embeddings"].read_bytes()[:300])
    with pytest.raises(UserError, match="shard 4 .* shard_00004.npy: size"):
        Collection(broken)
    shutil.copyfile(shard_files(one_process, 4)["embeddings"], files["embeddings"])
    manifest = Collection(broken).manifest
    write_manifest(broken, Manifest.new(**{k: v for k, v in manifest.__dict__.items() if k != "extraction"}))
    with pytest.raises(UserError, match="belongs to another extraction"):
        Collection(broken)
    files["ids"].unlink()
    with pytest.raises(UserError, match="shard_00000.ids.npy is missing|another extraction"):
        Collection(broken)
    with pytest.raises(UserError, match="no collection.json"):
        Collection(tmp_path)


def clustered_collection(folder: Path, count: int, dim: int = 32, seed: int = 0) -> Collection:
    """A complete extraction folder of `count` vectors around 50 centres, written as extract writes one."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    vectors = (centres[rng.integers(0, 50, count)] + 0.4 * rng.normal(size=(count, dim))).astype(np.float16)
    manifest = Manifest.new(model={"name": "m", "weights_hash": "h", "image_size": 8, "embed_dim": dim},
                            data="synthetic", split="train", count=count, shard_size=4000, dim=dim, classes=None,
                            preprocessing=1, complete=True)
    folder.mkdir(parents=True)
    write_manifest(folder, manifest)
    for k in range(manifest.shards):
        rows = manifest.rows(k)
        write_shard(folder, manifest, k, vectors[rows.start:rows.stop], np.full(len(rows), -1))
    return Collection(folder, full_check=True)


def test_the_index_kind_follows_the_size_and_the_memory_budget():
    assert index_module.choose_factory(10_000, 192, 2e9) == "Flat"
    assert index_module.choose_factory(1_000_000, 192, 2e9) == "IVF4096,Flat"
    assert index_module.choose_factory(100_000_000, 192, 2e9) == "OPQ48,IVF32768,PQ48"


def test_an_ivf_index_is_tuned_to_the_recall_target_and_opens_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "EXACT_UP_TO", 1000)
    collection = clustered_collection(tmp_path / "c", 20_000)
    record = index_module.build_index(collection, recall=0.9)
    assert record["factory"].startswith("IVF") and record["recall_at_10"] >= 0.9
    index, again = index_module.open_index(collection)
    assert again == record and index.ntotal == 20_000
    queries = index_module.l2_normalize(collection.take(np.arange(0, 20_000, 97)))
    truth = index_module.exact_neighbours(collection, queries, 11)
    found = index.search(queries, 11)[1]
    assert index_module.recall_at_k(found, truth, np.arange(0, 20_000, 97)) >= 0.85


def test_an_index_of_another_extraction_or_a_damaged_one_is_refused(tmp_path):
    first = clustered_collection(tmp_path / "a", 3000)
    index_module.build_index(first)
    record = json.loads((first.folder / "index.json").read_text())
    second = clustered_collection(tmp_path / "b", 3000, seed=1)
    (second.folder / "index.faiss").write_bytes((first.folder / "index.faiss").read_bytes())
    (second.folder / "index.json").write_bytes((first.folder / "index.json").read_bytes())
    (second.folder / "index.json.sha256").write_bytes((first.folder / "index.json.sha256").read_bytes())
    with pytest.raises(UserError, match="another extraction"):
        index_module.open_index(second)
    (first.folder / "index.json").write_text(json.dumps({**record, "nprobe": 3}))
    with pytest.raises(UserError, match="no usable index.faiss"):
        index_module.open_index(first)


def test_the_retrieval_benchmark_reports_size_latency_and_recall_in_its_last_line(tmp_path):
    collection = clustered_collection(tmp_path / "c", 3000)
    index_module.build_index(collection)
    result = subprocess.run([sys.executable, "-m", "dinotwins.bench", "--retrieval", str(collection.folder), "--json"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["num_vectors"] == 3000 and report["recall_at_10"] == 1.0 and report["query_p50_ms"] > 0
