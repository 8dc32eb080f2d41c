"""Data specs (folders, CIFAR-10 pickles, Fashion-MNIST IDX files) and the deterministic epoch sampler."""

import gzip
import importlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinotwins.data import SOURCES, SPEC_SYNTAX, fashion_mnist, folder, load_dataset
from dinotwins.data.fashion_mnist import read_idx
from dinotwins.data.sampler import EpochSampler
from dinotwins.errors import UserError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def save_image(path: Path, color=RED, size=(20, 20), **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, **kwargs)
    return path


# ------------------------------------------------------------------------------------------------ folders
def test_class_subfolders_become_labels_in_sorted_order(tmp_path):
    save_image(tmp_path / "zebra" / "a.png", BLUE)
    save_image(tmp_path / "apple" / "a.jpg", RED)
    save_image(tmp_path / "apple" / "nested" / "b.JPEG", RED)
    dataset = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert dataset.classes == ["apple", "zebra"]
    assert dataset.labels.tolist() == [0, 0, 1]
    assert dataset.images.shape == (3, 3, 8, 8) and dataset.images.dtype == torch.uint8
    assert dataset.images[2, :, 4, 4].tolist() == list(BLUE)
    image, label = dataset[2]
    assert image.shape == (3, 8, 8) and label == 1


def test_flat_folder_is_unlabeled_and_searched_recursively(tmp_path):
    save_image(tmp_path / "one.png")
    save_image(tmp_path / "deeper" / "two.webp")
    save_image(tmp_path / "three.BMP")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert len(dataset) == 3 and dataset.labels is None and dataset.classes is None
    assert dataset[0][1] == -1
    assert dataset.describe() == f"folder:{tmp_path} train: 3 images 3x16x16, unlabeled"


def test_storage_size_overrides_the_image_size(tmp_path):
    save_image(tmp_path / "a.png", size=(64, 64))
    dataset = load_dataset(f"folder:{tmp_path}", image_size=8, storage_size=32)
    assert dataset.images.shape == (1, 3, 32, 32)


def test_shorter_side_is_resized_and_the_centre_cropped(tmp_path):
    image = Image.new("RGB", (30, 10), RED)
    image.paste(GREEN, (10, 0, 20, 10))
    image.paste(BLUE, (20, 0, 30, 10))
    image.save(tmp_path / "wide.png")
    dataset = load_dataset(f"folder:{tmp_path}", image_size=10)
    assert (dataset.images[0] == torch.tensor(GREEN, dtype=torch.uint8).view(3, 1, 1)).all()


def test_grayscale_files_are_converted_to_rgb(tmp_path):
    Image.new("L", (8, 8), 77).save(tmp_path / "gray.png")
    dataset = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert dataset.images.shape == (1, 3, 8, 8) and (dataset.images == 77).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), RED)
    image.paste(BLUE, (0, 0, 10, 10))  # blue left half, red right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    dataset = load_dataset(f"folder:{tmp_path}", image_size=10, storage_size=20)
    top, bottom = dataset.images[0, :, 2, 10].int(), dataset.images[0, :, 17, 10].int()
    assert top[2] > 200 and top[0] < 60  # displayed upright, the blue half is on top
    assert bottom[0] > 200 and bottom[2] < 60


def test_corrupt_image_is_skipped_with_a_warning_naming_it(tmp_path):
    save_image(tmp_path / "good.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        dataset = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert len(dataset) == 1


def test_corrupt_image_in_a_labeled_folder_keeps_the_other_labels_aligned(tmp_path):
    save_image(tmp_path / "a" / "x.png", RED)
    (tmp_path / "a" / "y.png").write_bytes(b"garbage")
    save_image(tmp_path / "b" / "z.png", BLUE)
    with pytest.warns(UserWarning, match="y.png"):
        dataset = load_dataset(f"folder:{tmp_path}", image_size=4)
    assert dataset.labels.tolist() == [0, 1]
    assert dataset.images[1, 2, 0, 0] == 255


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    save_image(tmp_path / "train" / "cat" / "a.png")
    save_image(tmp_path / "train" / "cat" / "b.png")
    save_image(tmp_path / "train" / "dog" / "c.png")
    save_image(tmp_path / "val" / "cat" / "d.png")
    train = load_dataset(f"folder:{tmp_path}", "train", image_size=4)
    test = load_dataset(f"folder:{tmp_path}", "test", image_size=4)
    assert len(train) == 3 and train.classes == ["cat", "dog"]
    assert len(test) == 1 and test.classes == ["cat"]


def test_without_split_subfolders_both_splits_are_the_whole_folder(tmp_path):
    save_image(tmp_path / "a.png")
    save_image(tmp_path / "b.png")
    assert len(load_dataset(f"folder:{tmp_path}", "test", image_size=4)) == 2


def test_large_folders_are_decoded_per_batch(tmp_path, monkeypatch):
    save_image(tmp_path / "a.png", RED)
    save_image(tmp_path / "b.png", BLUE)
    eager = load_dataset(f"folder:{tmp_path}", image_size=8)
    monkeypatch.setattr(folder, "IN_MEMORY_BUDGET", 0)
    lazy = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert lazy.images is None and len(lazy) == 2
    assert torch.equal(lazy.get_batch(torch.tensor([1, 0])), eager.images[[1, 0]])
    assert torch.equal(lazy[1][0], eager.images[1])
    assert lazy.describe().endswith("2 images 3x8x8, unlabeled, decoded per batch")


def test_a_file_unreadable_at_batch_time_becomes_a_black_image_with_a_warning(tmp_path, monkeypatch):
    save_image(tmp_path / "a.png", RED)
    save_image(tmp_path / "b.png", BLUE)
    monkeypatch.setattr(folder, "IN_MEMORY_BUDGET", 0)
    lazy = load_dataset(f"folder:{tmp_path}", image_size=8)
    (tmp_path / "b.png").write_bytes(b"overwritten mid-training")
    with pytest.warns(UserWarning, match="b.png"):
        batch = lazy.get_batch(torch.tensor([0, 1]))
    assert batch.shape == (2, 3, 8, 8) and (batch[1] == 0).all() and batch[0, 0, 0, 0] == 255


def test_missing_folder_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}")


def test_empty_folder_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        load_dataset(f"folder:{tmp_path}")


def test_folder_without_images_is_a_user_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    (tmp_path / "sub").mkdir()
    with pytest.raises(UserError, match="no images"):
        load_dataset(f"folder:{tmp_path}")


def test_unknown_spec_kind_lists_the_valid_kinds():
    with pytest.raises(UserError, match="folder:PATH, cifar10:PATH, fashion-mnist"):
        load_dataset("imagenet:/data")


# ------------------------------------------------------------------------------------------------ cifar10
def _py2_str(value: bytes) -> bytes:
    return b"U" + bytes([len(value)]) + value if len(value) < 256 else b"T" + struct.pack("<i", len(value)) + value


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _py2_pickle_body(obj) -> bytes:
    """Pickle opcodes as Python 2 + numpy 1.x wrote CIFAR-10's batches: str as byte strings, arrays rebuilt by
    numpy.core.multiarray._reconstruct (Python 3 cannot write these itself: it pickles bytes via _codecs)."""
    if isinstance(obj, bytes):
        return _py2_str(obj)
    if isinstance(obj, int):
        return _py2_int(obj)
    if isinstance(obj, list):
        return b"](" + b"".join(_py2_pickle_body(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2_pickle_body(k) + _py2_pickle_body(v) for k, v in obj.items()) + b"u"
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R("
             + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb")
    shape = b"(" + b"".join(_py2_int(d) for d in obj.shape) + b"t"
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
            + b"\x87R(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(obj.tobytes()) + b"tb")


def write_py2_pickle(path: Path, obj) -> None:
    path.write_bytes(b"\x80\x02" + _py2_pickle_body(obj) + b".")


def fake_cifar_batch(n: int, first_label: int) -> dict:
    images = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    images[:, 0] = np.arange(n, dtype=np.uint8)[:, None, None]  # red plane = the image's index
    images[:, 2, 0, 1] = 200  # one blue pixel at row 0, column 1
    return {b"batch_label": b"fake", b"labels": [(first_label + i) % 10 for i in range(n)],
            b"data": images.reshape(n, 3072), b"filenames": [b"f%d.png" % i for i in range(n)]}


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        write_py2_pickle(root / f"data_batch_{i}", fake_cifar_batch(3, i))
    write_py2_pickle(root / "test_batch", fake_cifar_batch(4, 0))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_py2_pickle(root / "batches.meta", {b"num_cases_per_batch": 3, b"label_names": names, b"num_vis": 3072})
    return tmp_path


def test_cifar10_reads_python2_batches_from_the_folder_or_its_parent(cifar_dir):
    train = load_dataset(f"cifar10:{cifar_dir}", "train")
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels[:3].tolist() == [1, 2, 3] and train.classes[0] == "airplane"
    assert train.images[2, 0, 5, 5] == 2 and train.images[0, 2, 0, 1] == 200 and train.images[0, 2, 1, 0] == 0
    test = load_dataset(f"cifar10:{cifar_dir / 'cifar-10-batches-py'}", "test")
    assert len(test) == 4 and test.describe() == (f"cifar10:{cifar_dir / 'cifar-10-batches-py'} test: "
                                                  f"4 images 3x32x32, 10 classes")


def test_cifar10_reads_batches_pickled_by_python3_and_numpy2(tmp_path):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(pickle.dumps(fake_cifar_batch(2, 0), protocol=4))
    dataset = load_dataset(f"cifar10:{tmp_path}", "train")
    assert len(dataset) == 10 and dataset.classes == [str(i) for i in range(10)]


class _Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.target}",)


def test_malicious_cifar_pickle_is_refused_and_never_runs(cifar_dir, tmp_path):
    target = tmp_path / "pwned"
    batch = cifar_dir / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": _Exploit(target), b"labels": []}))
    with pytest.raises(UserError, match="test_batch.*refusing"):
        load_dataset(f"cifar10:{cifar_dir}", "test")
    assert not target.exists()


def test_cifar10_with_a_missing_batch_names_it(cifar_dir):
    (cifar_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset(f"cifar10:{cifar_dir}")


def test_cifar10_without_a_path_is_a_user_error():
    with pytest.raises(UserError, match="cifar10:PATH"):
        load_dataset("cifar10")


# ------------------------------------------------------------------------------------------------ fashion-mnist
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_train=6, n_test=4, gz=False) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    files = {"train-images-idx3-ubyte": train_images,
             "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 10}
    for name, array in files.items():
        raw = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return train_images


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_reads_idx_files_from_the_given_path(tmp_path, gz):
    train_images = write_fashion_mnist(tmp_path, gz=gz)
    train = load_dataset(f"fashion-mnist:{tmp_path}", "train", image_size=32)
    assert train.images.shape == (6, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(train_images))
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5] and train.classes[9] == "Ankle boot"
    assert train.describe() == f"fashion-mnist:{tmp_path} train: 6 images 1x28x28, 10 classes"
    assert len(load_dataset(f"fashion-mnist:{tmp_path}", "test")) == 4


def test_truncated_idx_file_is_a_user_error_naming_it(tmp_path):
    write_fashion_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(UserError, match="train-images-idx3-ubyte is truncated"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_truncated_gzip_idx_file_is_a_user_error_naming_it(tmp_path):
    write_fashion_mnist(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:40])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        load_dataset(f"fashion-mnist:{tmp_path}")


def test_idx_file_with_a_bad_magic_number_is_a_user_error(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(path)


def test_idx_reader_returns_the_array_it_holds(tmp_path):
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    (tmp_path / "tiny").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "tiny"), array)
    with pytest.raises(UserError, match="3-d"):
        read_idx(tmp_path / "tiny", ndim=3)


def test_fashion_mnist_found_nowhere_names_all_three_places(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM", tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_CACHE", tmp_path / "cache")
    monkeypatch.setattr(fashion_mnist, "_download_fashion_mnist", lambda: False)
    with pytest.raises(UserError) as error:
        load_dataset(f"fashion-mnist:{tmp_path / 'given'}")
    message = str(error.value)
    assert "\n" not in message
    for place in ("given", "system", "cache", "torchvision"):
        assert place in message


def test_fashion_mnist_falls_back_to_the_system_copy_with_a_warning(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM", tmp_path / "system")
    with pytest.warns(UserWarning, match="using"):
        dataset = load_dataset(f"fashion-mnist:{tmp_path / 'empty'}")
    assert len(dataset) == 6


def test_fashion_mnist_uses_the_torchvision_download_when_nothing_else_has_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM", tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_CACHE", tmp_path / "cache")
    monkeypatch.setattr(fashion_mnist, "_download_fashion_mnist",
                        lambda: write_fashion_mnist(tmp_path / "cache" / "FashionMNIST" / "raw") is not None)
    assert len(load_dataset("fashion-mnist", "test")) == 4


def test_fashion_mnist_default_loads_60000_train_and_10000_test_images():
    assert fashion_mnist.FASHION_MNIST_SYSTEM.is_dir(), "Debian's dataset-fashion-mnist is missing: run `make setup` as root"
    train = load_dataset("fashion-mnist", "train")
    assert train.images.shape == (60000, 1, 28, 28) and torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.describe() == "fashion-mnist train: 60000 images 1x28x28, 10 classes"
    assert len(load_dataset("fashion-mnist", "test")) == 10000


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_drops_the_last_partial_batch_per_rank():
    assert EpochSampler(100, 8, seed=0).batches_per_epoch == 12
    assert EpochSampler(100, 8, seed=0, rank=1, world_size=2).batches_per_epoch == 6


def test_sampler_batches_are_int64_of_batch_size_and_cover_distinct_images():
    batches = list(EpochSampler(50, 8, seed=0).batches(0))
    assert all(b.dtype == torch.int64 and b.shape == (8,) for b in batches)
    seen = torch.cat(batches)
    assert len(seen.unique()) == 48 and seen.min() >= 0 and seen.max() < 50


def test_ranks_take_disjoint_slices_of_each_global_batch():
    ranks = [list(EpochSampler(64, 4, seed=3, rank=r, world_size=4).batches(2)) for r in range(4)]
    everything = torch.cat([torch.cat(batches) for batches in ranks])
    assert len(everything) == 64 and len(everything.unique()) == 64
    single = list(EpochSampler(64, 16, seed=3).batches(2))
    for position, global_batch in enumerate(single):  # together the ranks see the single-process batches
        assert torch.equal(torch.cat([ranks[r][position] for r in range(4)]), global_batch)


def test_resuming_at_start_batch_yields_exactly_the_remaining_batches():
    full = list(EpochSampler(40, 4, seed=1).batches(5))
    resumed = list(EpochSampler(40, 4, seed=1).batches(5, start_batch=7))
    assert len(resumed) == 3 and all(torch.equal(a, b) for a, b in zip(full[7:], resumed))
    assert list(EpochSampler(40, 4, seed=1).batches(5, start_batch=10)) == []


def test_permutation_is_a_function_of_seed_and_epoch():
    first, again = EpochSampler(100, 10, seed=4), EpochSampler(100, 10, seed=4)
    assert torch.equal(first.permutation(3), again.permutation(3))
    assert not torch.equal(first.permutation(3), first.permutation(4))
    assert not torch.equal(first.permutation(3), EpochSampler(100, 10, seed=5).permutation(3))


def test_batch_larger_than_the_dataset_is_a_user_error():
    with pytest.raises(UserError, match="batch size 64 larger than dataset of 50 images; lower --batch-size"):
        EpochSampler(50, 64, seed=0)
    with pytest.raises(UserError, match="lower --batch-size"):
        EpochSampler(50, 16, seed=0, world_size=4)


# ------------------------------------------------------------------------------------------------ the registry
def test_every_registered_source_is_a_module_with_a_load_function_and_a_spec_syntax():
    for kind, source in SOURCES.items():
        assert source.syntax.startswith(kind) and source.help
        assert callable(importlib.import_module(source.module).load), kind
    assert SPEC_SYNTAX.split(" | ") == [source.syntax for source in SOURCES.values()]
    assert {"folder", "cifar10", "fashion-mnist", "synthetic", "scenes"} <= set(SOURCES)


def test_worker_processes_decode_the_same_batches_ahead_of_the_step(tmp_path, monkeypatch):
    from dinotwins.data import folder as folder_source
    from dinotwins.data.loader import StepBatches, prefetched, workers_for
    from dinotwins.data.sampler import EpochSampler

    for i in range(24):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{i:02d}.jpg")
    monkeypatch.setattr(folder_source, "IN_MEMORY_BUDGET", 0)
    data = load_dataset(f"folder:{tmp_path}", "train", image_size=16)
    assert data.images is None and workers_for(-1, data) >= 1 and workers_for(0, data) == 0
    steps = StepBatches(data, EpochSampler(len(data), 5, seed=3), steps_per_epoch=4)
    in_process = list(prefetched(steps, 2, 9, workers=0))
    in_workers = list(prefetched(steps, 2, 9, workers=2))
    assert len(in_workers) == 7 and all(torch.equal(a, b) for a, b in zip(in_process, in_workers))
