"""Datasets behind `--data SPEC`: one file per source, registered here, plus the sampler and the augmentation.

A spec is `KIND[:ARG]`; `SOURCES` maps each kind to its syntax, a one-line help and the module that loads it
(`load(spec, arg, split, size, budget) -> ImageDataset`; `budget`: the bytes of decoded images the source may hold
in memory, beyond which a source that can decodes or renders each batch when asked; the default when not given). The `--data` help of train.py, `python -m dinotwins.evaluate`
and `python -m app` is `SPEC_SYNTAX`, and `sources_help()` lists every source with its help. Source modules are
imported only when a spec asks for them, so this registry stays torch-free for the command lines' --help.

Add a data source: a new file here with a `load` function, and one line in `SOURCES`.

`load_dataset(spec, split)`, split "train" or "test". `storage_size` (default: `image_size`) is the stored side
for folder, synthetic and scenes data; CIFAR-10 (32 px) and Fashion-MNIST (28 px) keep their native size. Data
errors a user can cause are a `UserError` naming the input.

Beside the sources: dataset.py (`ImageDataset`, the uint8 images every source returns), sampler.py
(`EpochSampler`, the deterministic sharded batches) and augment.py (`MultiCrop`, batched multi-crop views).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dinotwins.errors import UserError

if TYPE_CHECKING:
    from dinotwins.data.dataset import ImageDataset


@dataclass(frozen=True)
class Source:
    syntax: str  # how a spec names it, e.g. "folder:PATH"
    help: str  # one line for --help
    module: str  # the module whose `load(spec, arg, split, size, budget)` returns its ImageDataset
    function: str = "load"  # that function's name there, where a module loads several kinds


SOURCES = {
    "folder": Source("folder:PATH", "images under PATH; class subfolders label them, train/ and test/ split them",
                     "dinotwins.data.folder"),
    "cifar10": Source("cifar10:PATH", "CIFAR-10's python batches in PATH", "dinotwins.data.cifar10"),
    "fashion-mnist": Source("fashion-mnist[:PATH]", "Fashion-MNIST's IDX files in PATH, else Debian's, else a "
                            "download", "dinotwins.data.fashion_mnist"),
    "synthetic": Source("synthetic[:N]", "N shapes on clutter, exact object masks (default 4096)",
                        "dinotwins.data.synthetic"),
    "scenes": Source("scenes[:N]", "N objects pasted on photographs, exact masks (default 24000)",
                     "dinotwins.data.scenes"),
    "scenes-generated": Source("scenes-generated[:N]", "scenes with every training background generated (test: "
                               "scenes' own)", "dinotwins.data.scenes", "load_generated"),
    "scenes-paired": Source("scenes-paired[:N]", "scenes-generated with each train image on two backgrounds, "
                            "its crops taken from both (test: scenes' own)", "dinotwins.data.scenes", "load_paired"),
    "scenes-paired-photos": Source("scenes-paired-photos[:N]", "scenes with each train image on two backgrounds "
                                   "(photographs), its crops taken from both (test: scenes' own)",
                                   "dinotwins.data.scenes", "load_paired_photos"),
}
SPEC_SYNTAX = " | ".join(source.syntax for source in SOURCES.values())


def sources_help() -> str:
    """One line per source, syntax then help, for a command line's --help."""
    width = max(len(source.syntax) for source in SOURCES.values())
    return "\n".join(f"  {source.syntax:<{width}}  {source.help}" for source in SOURCES.values())


def image_count(spec: str, arg: str, default: int) -> int:
    """The N of a generated source's `name:N` (`default` where it is left out); UserError naming `name:N` when it
    is not a whole number >= 1."""
    name = spec.strip().partition(":")[0]
    try:
        count = int(arg) if arg else default
    except ValueError:
        raise UserError(f"{name}:N needs a whole number of images, got {arg!r}") from None
    if count < 1:
        raise UserError(f"{name}:N needs at least 1 image, got {count}")
    return count


def load_dataset(spec: str, split: str = "train", *, image_size: int = 32, storage_size: int | None = None,
                 budget: int | None = None) -> ImageDataset:
    """The dataset named by `spec` (see `SOURCES`), split "train" or "test"; `budget` (bytes) as in the module
    docstring (0: nothing held in memory where the source can avoid it)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size = storage_size or image_size
    if size < 1:
        raise UserError(f"image size must be positive, got {size}")
    kind, _, arg = spec.strip().partition(":")
    if kind not in SOURCES:
        raise UserError(f"unknown data spec {spec!r}; use one of {', '.join(s.syntax for s in SOURCES.values())}")
    source = SOURCES[kind]
    load = getattr(importlib.import_module(source.module), source.function)
    return load(spec, arg, split, size) if budget is None else load(spec, arg, split, size, budget)
