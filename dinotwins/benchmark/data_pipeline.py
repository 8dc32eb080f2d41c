"""`python -m dinotwins.bench --data-pipeline`: augmented multi-crop images per second, with a config's crops and
batch size, from Fashion-MNIST in memory and from a folder of JPEGs decoded from disk."""

from __future__ import annotations

import itertools
import tempfile
import time
from pathlib import Path

import torch

from dinotwins.config import TrainConfig
from dinotwins.data.augment import MultiCrop


def bench_data(cfg: TrainConfig, steps: int) -> dict[str, float | str]:
    """Augmented multi-crop images per second, Fashion-MNIST in memory and a folder of JPEGs from disk."""
    from PIL import Image

    from dinotwins.data import load_dataset
    from dinotwins.data.sampler import EpochSampler

    crop, batch, size = MultiCrop(cfg.augment), cfg.batch_size, cfg.model.image_size
    results: dict[str, float | str] = {"batch_size": batch, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        fmnist = load_dataset("fashion-mnist", "train", image_size=size)
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        for i in range(512):
            array = fmnist.images[i, 0].numpy()
            Image.fromarray(array).convert("RGB").resize((96, 96)).save(folder / f"{i:04d}.jpg", quality=90)
        for name, spec in (("fashion_mnist", "fashion-mnist"), ("jpeg_folder", f"folder:{folder}")):
            t0 = time.perf_counter()
            dataset = load_dataset(spec, "train", image_size=size)
            load_s = time.perf_counter() - t0
            sampler = EpochSampler(len(dataset), batch, seed=0)
            batches = itertools.chain.from_iterable(sampler.batches(epoch) for epoch in itertools.count())
            generator = torch.Generator().manual_seed(0)
            n, start = 0, None
            for i, indices in enumerate(batches):
                if i == 2:
                    start = time.perf_counter()
                if i >= 2 + steps:
                    break
                crop(dataset.get_batch(indices), generator)
                n += batch if i >= 2 else 0
            results[f"{name}_img_per_s"] = round(n / (time.perf_counter() - start), 1)
            results[f"{name}_load_s"] = round(load_s, 3)
    return results
