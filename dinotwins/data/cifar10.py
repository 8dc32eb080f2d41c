"""The `cifar10:PATH` source: the CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta) in PATH or in
PATH/cifar-10-batches-py, 32 x 32 RGB.

They are pickles, read by a restricted unpickler that can build only numpy arrays (and the builtin dicts, lists,
bytes and ints around them); anything else in a pickle is refused, never run.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from dinotwins.data.dataset import ImageDataset
from dinotwins.errors import UserError


def load(spec: str, arg: str, split: str, size: int, budget: int = 0) -> ImageDataset:
    """CIFAR-10 keeps its native 32 px whatever `size` is asked for."""
    if not arg:
        raise UserError("cifar10 needs a path: --data cifar10:PATH (the folder holding data_batch_1 ...)")
    root = Path(arg).expanduser()
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise UserError(f"CIFAR-10 folder {root} does not exist; pass the folder holding data_batch_1..5")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise UserError(f"CIFAR-10 batch {root / missing[0]} not found; pass the folder holding data_batch_1..5 "
                        f"and test_batch")
    data, labels = [], []
    for name in names:
        batch = safe_unpickle(root / name)
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise UserError(f"{root / name} has no data/labels entries; is it a CIFAR-10 python batch?")
        array = np.asarray(batch[b"data"])
        if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != 3 * 32 * 32 \
                or len(batch[b"labels"]) != len(array):
            raise UserError(f"{root / name} does not hold N x 3072 uint8 images with N labels; is it CIFAR-10?")
        data.append(array.reshape(-1, 3, 32, 32))  # rows are the red, green, blue planes, 32 x 32 each
        labels.extend(int(v) for v in batch[b"labels"])
    classes = [str(i) for i in range(10)]
    if (root / "batches.meta").is_file():
        meta = safe_unpickle(root / "batches.meta")
        if isinstance(meta, dict) and b"label_names" in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    return ImageDataset(spec, torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.int64),
                        classes, split=split, storage_size=32)



class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batches and nothing else: the only globals it will look up are the three numpy
    needs to rebuild an array. Builtin dicts, lists, bytes and ints need no lookup; every other global
    (os.system, builtins.eval, ...) is refused before anything runs."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x names, as in the files from the CIFAR site
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x names
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "numpy.core.multiarray":  # the numpy 2 home of the same function, without its shim's warning
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> object:
    """The object in pickle file `path`, built by `RestrictedUnpickler` (bytes stay bytes, as in Python 2)."""
    try:
        return RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc}); check the file") from None
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted pickle is the file's fault
        raise UserError(f"{path} is not a plain CIFAR-10 batch ({exc}); refusing to load it") from None
