"""The app's models: a cache keyed by resolved path, labels for display, and the default demo models.

`ModelCache.get(spec)` loads anything `dinotwins.load_model` takes (run dir, exported .safetensors, official DINO
.pth) once per (resolved path, file size, mtime): launching with the same model twice, or two apps built in one
process (tests), share one copy, and a retrained file is loaded afresh.

With no MODEL on the command line the app shows one of the demo sets shipped under `assets/models/<set>/{dino,
barlow,hybrid}/`: `scenes` (the default: 64 px photo-scale models) or `fashion-mnist` (28 px grayscale). Where a
set is missing, stand-ins are trained with the smoke preset, by `train.py` in a subprocess (no training code in
the app's process), into the cache folder: seconds on a CPU; they have learned next to nothing, and the app says
so in a notice.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dinotwins import LoadedModel, load_model
from dinotwins.errors import UserError
from dinotwins.models.export import EXPORT_NAME
from dinotwins.objectives import METHODS as DEMO_METHODS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPO_ROOT / "assets" / "models"
# Sub-folders of DEMO_DIR; each is also the data spec of its gallery and evaluation.
DEMO_SETS = ("scenes", "fashion-mnist")
DEFAULT_DEMO = "scenes"


@dataclass(frozen=True)
class ModelEntry:
    """One model as the app shows it: a unique label, where it came from, the loaded model."""

    label: str
    path: Path  # resolved run dir or weights file
    model: LoadedModel

    @property
    def folder(self) -> Path:
        """Where run files (metrics.jsonl, eval.json) sit: the run dir, or the folder holding the weights."""
        return self.path if self.path.is_dir() else self.path.parent


class ModelCache:
    """Loaded models keyed by (resolved path, size, mtime); keeps the `capacity` most recently used."""

    def __init__(self, device: str = "cpu", capacity: int = 8):
        self.device = device
        self.capacity = capacity
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: str | Path) -> tuple[Path, LoadedModel]:
        path = Path(spec).expanduser().resolve()
        if not path.exists():
            raise UserError(f"model {spec} does not exist; pass a run directory, a .safetensors or a .pth file")
        weights = path / EXPORT_NAME if path.is_dir() else path
        stat = weights.stat() if weights.is_file() else None
        key = (str(path), stat.st_size if stat else None, stat.st_mtime_ns if stat else None)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return path, self._models[key]
        model = load_model(path, device=self.device)  # outside the lock: loading can take seconds
        with self._lock:
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return path, model

    def entries(self, specs: list[str | Path]) -> list[ModelEntry]:
        """Load every spec and give each a unique label (its name, then `name (2)` for repeats)."""
        entries, seen = [], {}
        for spec in specs:
            path, model = self.get(spec)
            base = model.name or path.stem
            seen[base] = seen.get(base, 0) + 1
            label = base if seen[base] == 1 else f"{base} ({seen[base]})"
            entries.append(ModelEntry(label=label, path=path, model=model))
        return entries


def default_model_specs(cache_dir: Path, demo: str = DEFAULT_DEMO,
                        progress: Callable[[str], None] = print) -> tuple[list[Path], str]:
    """The demo set's models, or smoke-trained stand-ins where they are missing; returns (paths, notice)."""
    if demo not in DEMO_SETS:
        raise UserError(f"unknown demo set {demo!r}; use one of {', '.join(DEMO_SETS)}")
    shipped = [DEMO_DIR / demo / m for m in DEMO_METHODS]
    if all((p / EXPORT_NAME).is_file() for p in shipped):
        return shipped, ""
    paths = [smoke_model(method, cache_dir / "smoke-models", progress) for method in DEMO_METHODS]
    notice = (f"No demo models under {(DEMO_DIR / demo).relative_to(REPO_ROOT)}/ yet: showing stand-ins trained "
              f"just now with the smoke preset (4 steps on synthetic data). Their maps and neighbours are close to "
              f"random; pass your own runs (`python -m app runs/dino runs/barlow`) to compare real models.")
    return paths, notice


def smoke_model(method: str, root: Path, progress: Callable[[str], None] = print) -> Path:
    """A smoke-preset run of `method` on synthetic data in `root/method`, trained once (by train.py, in a
    subprocess) and reused after."""
    out = root / method
    if (out / EXPORT_NAME).is_file():
        return out
    progress(f"training a stand-in {method} model with the smoke preset into {out} ...")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{method}-", dir=root))
    try:
        command = [sys.executable, str(REPO_ROOT / "train.py"), "--method", method, "--preset", "smoke",
                   "--data", "synthetic", "--device", "cpu", "--no-progress", "--out", str(staging / "run")]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"training a stand-in {method} model failed ({reason}); pass your own models")
        if not (out / EXPORT_NAME).is_file():  # another process may have finished first
            shutil.rmtree(out, ignore_errors=True)
            (staging / "run").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def open_models_and_gallery(specs: list[str], gallery_spec: str | None, *, cache_root: Path,
                            demo: str = DEFAULT_DEMO, device: str = "cpu", collections: list[str] | None = None):
    """(entries, gallery, notices, opened collections or None) for a launch: the given models (else the demo set)
    and the given gallery (else the test split of what the first model trained on, else `gallery.DEFAULT_SPECS`).
    With `collections` (extraction folders, one per model in order; the models may be left out, then each folder's
    own is opened), the gallery is theirs and nothing is embedded here (see app/explorer.py)."""
    from app.gallery import DEFAULT_SPECS, gallery_size, load_gallery

    if collections:
        return _open_collections(specs, collections, gallery_spec, device)
    notices = []
    if not specs:
        specs, notice = default_model_specs(cache_root, demo)
        notices.append(notice)
    entries = ModelCache(device=device).entries(specs)
    trained_on = [str(e.model.metadata["data"]) for e in entries if e.model.metadata.get("data")]
    gallery, notice = load_gallery(gallery_spec, gallery_size([e.model.image_size for e in entries]),
                                   [*trained_on[:1], *DEFAULT_SPECS])
    notices.append(notice)
    return entries, gallery, [n for n in notices if n], None


def _open_collections(specs: list[str], folders: list[str], gallery_spec: str | None, device: str):
    from app.gallery import collection_gallery
    from dinotwins.collection.shards import Collection

    opened = [Collection(Path(folder).expanduser()) for folder in folders]
    if specs and len(specs) != len(opened):
        raise UserError(f"{len(specs)} models but {len(opened)} --index folders; give one folder per model, in order")
    specs = specs or [c.manifest.model_path for c in opened]
    entries = ModelCache(device=device).entries(specs)
    first = opened[0].manifest
    for entry, collection in zip(entries, opened):
        made_by = collection.manifest.model
        if made_by["weights_hash"] != entry.model.weights_hash:
            raise UserError(f"{collection.folder} holds embeddings of {made_by['name']}, not of {entry.label}; "
                            f"extract with that model or pass the folder made with it")
        if (collection.manifest.data, collection.manifest.split, collection.manifest.count) != \
                (first.data, first.split, first.count):
            raise UserError(f"{collection.folder} holds {collection.manifest.data} {collection.manifest.split} where "
                            f"{opened[0].folder} holds {first.data} {first.split}; extract the same images for "
                            f"every model")
    if gallery_spec is not None and gallery_spec != first.data:
        raise UserError(f"--gallery {gallery_spec} differs from the extraction's data {first.data}; leave --gallery "
                        f"out with --index")
    return entries, collection_gallery(first, opened[0].labels), [], opened
