"""The evaluation of frozen self-supervised ViTs, one row per model (`python -m dinotwins.evaluate`, cli.py).

One row per model, plus baselines (raw pixels; randomly initialized ViTs for each distinct model shape, averaged
over `RANDOM_INITS` seeds, since one random ViT's attention scores depend on its seed, named by its blocks, width,
heads, image and patch size, so models of two sizes get two random rows) and, for the attention
columns alone, the object masks themselves drawn as maps at each distinct patch grid (`object_maps`: what a model
that looks at the object and nothing else scores, the top of the attention columns) and, where the train split has
masks, the train objects' mean mask as every test image's map (`prior_maps`: what knowing where objects tend to be
scores without looking at the image; the bar a map that finds the object must clear); on request (`own_mean_maps`),
for each model its own mean map over the test images drawn as every image's map (`own_mean_map`: what its maps hold
that does not depend on the image; where this row's Jaccard is above the model's, the part that does costs it):
- k-NN: the DINO paper's weighted vote (k = 20, T = 0.07) of the test split against every train label (knn.py);
- linear probe: logistic regression on a class-balanced, seeded 10 % of the train labels, the DinoTwins paper's
  low-label protocol (probe.py);
- attention-mask Jaccard on data with exact object masks (`scenes`, `synthetic`): the last layer's CLS attention
  cut at 60 % of its mass, against the object, for the mean-of-heads map and the best head (attention_masks.py).
  When --data has masks its test split is used; otherwise (Fashion-MNIST, CIFAR-10, folders) the first
  `MASK_IMAGES` images of synthetic's test split, generated at the model's size; beside it the share of the
  mean-of-heads map's mass on the object, the object's share of the image (what a map blind to it gets), and
  what the mean-of-heads Jaccard is made of: its mask's share of the image and the share of the mask on the object;
  and how far the map's centre of mass moves with the object's (`follows_object`: 1 for the object masks, 0 for
  any map the same for every image);
- foreground probe (patch_probe.py): where --data has object masks in both splits, a logistic regression on the
  last-layer patch tokens of the first `PROBE_IMAGES` train images, telling object patches from background ones;
  the IoU of its foreground on the test split;
- embedding health of the test features: effective rank and the std of L2-normalized embeddings
  (embedding_health.py);
- what neighbours share, where the test split records what each image was made from (scenes): the share of each
  test image's 10 nearest test images with the same object file, and with the same background photograph
  (neighbours.py).

Data: the train split is the labeled pool, the test split the queries. Both are loaded once, stored at the first
MODEL's image size (the size `train.py` stores folder and synthetic data at; CIFAR-10 and Fashion-MNIST keep their
native size), and resized to each model's own size by `preprocess.eval_transform`. The raw-pixel baseline uses the
stored images as they are. For the attention masks of a model whose size differs from the stored one, the
synthetic test split is generated again at that model's size. Features are cached on disk (features.py).

Unlabeled data: k-NN and probe figures are null, the rest is still measured.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dinotwins.data import load_dataset
from dinotwins.data.dataset import ImageDataset
from dinotwins.errors import UserError
from dinotwins.evaluation.attention_masks import (KEEP_MASS, attention_jaccard, follows_object, mask_extent,
                                                   mass_on_object, normalized, object_area, object_maps, prior_maps)
from dinotwins.evaluation.embedding_health import effective_rank, embedding_std
from dinotwins.evaluation.features import (BATCH_SIZE, DEFAULT_CACHE_DIR, extract_features, normalization_of,
                                           raw_pixel_features)
from dinotwins.evaluation.knn import KNN_K, KNN_TEMPERATURE, knn_classify
from dinotwins.evaluation.neighbours import shared_neighbours
from dinotwins.evaluation.patch_probe import foreground_probe_iou
from dinotwins.evaluation.probe import linear_probe
from dinotwins.models.preprocess import eval_transform

LABEL_FRACTION = 0.1  # the DinoTwins paper's low-label protocol
MASK_DATA = "synthetic"  # where attention masks are scored when --data has no object masks
MASK_IMAGES = 1024
ATTENTION_KEYS = ("attn_jaccard_mean_heads", "attn_jaccard_best_head", "attn_on_object", "object_area",
                  "attn_mask_area", "attn_mask_on_object", "attn_follows_object")
NEIGHBOUR_KEYS = {"object": "nn_same_object", "background": "nn_same_background"}  # made_from name -> column
COLUMNS = ("model", "knn_top1", "knn_top5", "linear_top1", "linear_top5", *ATTENTION_KEYS, "patch_fg_iou",
           *NEIGHBOUR_KEYS.values(), "effective_rank", "embedding_std", "num_train", "num_test")
HEADERS = ("model", "k-NN top-1", "k-NN top-5", "linear top-1", "linear top-5", "attn J (mean)",
           "attn J (best head)", "attn on object", "object area", "mask area", "mask on object", "follows object",
           "patch fg IoU", "NN same object", "NN same bg", "eff. rank", "emb. std", "train", "test")
RANDOM_INITS = 3  # seeds averaged in the random-init row: one random ViT's attention Jaccard is a draw
PROBE_IMAGES = 1000  # train images the foreground probe learns from (64 patches each at 64 px / 8)
RAW_PIXELS = "raw pixels"


def check_options(k: int, temperature: float, label_fraction: float) -> None:
    """UserError naming the flag when an option is out of range."""
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if not temperature > 0:
        raise UserError(f"--temperature must be positive, got {temperature}; DINO uses 0.07")
    if not 0.0 < label_fraction <= 1.0:
        raise UserError(f"--label-fraction must be in (0, 1], got {label_fraction}; e.g. 0.1 for 10 %")


def evaluate_model(model, train: ImageDataset, test: ImageDataset, *, k: int = KNN_K,
                   temperature: float = KNN_TEMPERATURE, label_fraction: float = LABEL_FRACTION, seed: int = 0,
                   cache_dir: str | Path | None = None, keep_mass: float = KEEP_MASS,
                   progress: bool = False, attention_scale: float = 1.0, attention_layer: int = 0,
                   linear_c: float | None = None) -> dict[str, Any]:
    """One row (keys `COLUMNS`) for a `LoadedModel`: train = labeled pool, test = queries; the attention columns
    read block `attention_layer` (1 = first, 0 = the last); the linear probe at `linear_c` (None: chosen)."""
    check_options(k, temperature, label_fraction)
    train_feats = extract_features(model, train, cache_dir=cache_dir, progress=progress)
    test_feats = extract_features(model, test, cache_dir=cache_dir, progress=progress)
    row = score_features(model.name, train_feats, train.labels, test_feats, test.labels, k=k,
                         temperature=temperature, label_fraction=label_fraction, seed=seed, linear_c=linear_c)
    row.update(neighbour_scores(test_feats, test))
    row.update(attention_scores(model, test, keep_mass, scale=attention_scale, layer=attention_layer))
    row["patch_fg_iou"] = foreground_probe_score(model, train, test)
    return {key: row[key] for key in COLUMNS}


def evaluate_raw_pixels(train: ImageDataset, test: ImageDataset, *, k: int = KNN_K,
                        temperature: float = KNN_TEMPERATURE, label_fraction: float = LABEL_FRACTION,
                        seed: int = 0) -> dict[str, Any]:
    """The raw-pixel baseline's row: the stored images, flattened, as features; no attention."""
    check_options(k, temperature, label_fraction)
    test_feats = raw_pixel_features(test)
    row = score_features(RAW_PIXELS, raw_pixel_features(train), train.labels, test_feats, test.labels, k=k,
                         temperature=temperature, label_fraction=label_fraction, seed=seed)
    row.update(neighbour_scores(test_feats, test))
    row.update(dict.fromkeys((*ATTENTION_KEYS, "patch_fg_iou")))
    return {key: row[key] for key in COLUMNS}


def score_features(name: str, train_feats: np.ndarray, train_labels: torch.Tensor | None, test_feats: np.ndarray,
                   test_labels: torch.Tensor | None, *, k: int, temperature: float, label_fraction: float,
                   seed: int, linear_c: float | None = None) -> dict[str, Any]:
    """k-NN, linear probe and embedding health of given features (k-NN and probe None without labels)."""
    row: dict[str, Any] = {"model": name, "num_train": len(train_feats), "num_test": len(test_feats),
                           "knn_top1": None, "knn_top5": None, "linear_top1": None, "linear_top5": None}
    if train_labels is not None and test_labels is not None:
        train_y, test_y = train_labels.cpu().numpy(), test_labels.cpu().numpy()
        row["knn_top1"], row["knn_top5"] = knn_classify(train_feats, train_y, test_feats, test_y, k=k,
                                                        temperature=temperature)
        row["linear_top1"], row["linear_top5"] = linear_probe(train_feats, train_y, test_feats, test_y,
                                                              label_fraction=label_fraction, seed=seed, c=linear_c)
    row["effective_rank"] = effective_rank(test_feats)
    row["embedding_std"] = embedding_std(test_feats)
    return row


def neighbour_scores(test_feats: np.ndarray, test: ImageDataset) -> dict[str, float | None]:
    """`NEIGHBOUR_KEYS`' columns: what the test images' nearest neighbours share (None where the split does not
    record it)."""
    shares = shared_neighbours(test_feats, test.made_from) if test.made_from else {}
    return {key: shares.get(name) for name, key in NEIGHBOUR_KEYS.items()}


def attention_scores(model, test: ImageDataset, keep_mass: float = KEEP_MASS, batch_size: int = BATCH_SIZE,
                     scale: float = 1.0, layer: int = 0) -> dict[str, float]:
    """`ATTENTION_KEYS` on the test split's object masks: the Jaccard index of the mean-of-heads masks and of the
    best head, the mean map's mass on the object and the object's area, the model run at `scale` times its
    training size (`LoadedModel.input_size`), its CLS attention read in block `layer` (1 = first, 0 = the last).

    A test split without masks is replaced by the first `MASK_IMAGES` of synthetic's test split. When the stored
    size differs from the input size, the same split is generated again at the input size (synthetic and scenes
    render at any size) and its first len(test) images are used (any sample of the split measures the same thing).
    """
    maps, test = attention_maps(model, test, batch_size, scale, layer)
    return map_scores(maps, test.masks.cpu(), keep_mass)


def attention_maps(model, test: ImageDataset, batch_size: int = BATCH_SIZE, scale: float = 1.0,
                   layer: int = 0) -> tuple[torch.Tensor, ImageDataset]:
    """The CLS attention maps (N, heads, h, w) `attention_scores` scores, and the images they are of (`mask_split`)."""
    size = model.input_size(scale)
    test = mask_split(test, size)
    block = functools.partial(model.attention, layer=model.block_index(layer))
    return _per_batch(block, model, test, size, batch_size), test


def mask_split(test: ImageDataset, size: int) -> ImageDataset:
    """The images the attention columns are scored on at input size `size`: the test split, or the first
    `MASK_IMAGES` of synthetic's where it has no masks; rendered again at `size` where stored at another."""
    if test.masks is None:
        test = limit_dataset(load_dataset(MASK_DATA, "test", image_size=size), MASK_IMAGES, first=True)
    if test.image_shape[-1] != size:
        regenerated = load_dataset(test.name, test.split, image_size=size)
        test = limit_dataset(regenerated, len(test), first=True)
    return test


def map_scores(maps: torch.Tensor, masks: torch.Tensor, keep_mass: float = KEEP_MASS) -> dict[str, float]:
    """`ATTENTION_KEYS` of maps (N, heads, h, w) against bool masks (N, H, W)."""
    mean_heads, per_head = attention_jaccard(maps, masks, keep_mass)
    return dict(zip(ATTENTION_KEYS, (mean_heads, per_head.max().item(), mass_on_object(maps, masks),
                                     object_area(masks), *mask_extent(maps, masks, keep_mass),
                                     follows_object(maps, masks))))


def mean_row(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """One row named `name`: each column the mean of the rows' values (None where any row has none)."""
    out: dict[str, Any] = {"model": name}
    for key in COLUMNS[1:]:
        values = [row[key] for row in rows]
        if any(v is None for v in values):
            out[key] = None
        elif all(v == values[0] for v in values):  # the counts, and what the seeds share (the object's area)
            out[key] = values[0]
        else:
            out[key] = float(np.mean(values))
    return out


def random_init_name(name: str, inits: int) -> str:
    return name if inits == 1 else f"{name}, mean of {inits} seeds"


def evaluate_object_maps(model, test: ImageDataset, keep_mass: float = KEEP_MASS, scale: float = 1.0,
                         train: ImageDataset | None = None) -> list[dict[str, Any]]:
    """The reference rows of the attention columns at `model`'s patch grid (input size `scale` x its own), scored
    like a model's, every other column None: the object masks as maps (`object_maps`, the top) and, where `train`
    and the test split have masks, the train objects' mean mask as every map (`prior_maps`, the blind bar)."""
    size = model.input_size(scale)
    has_masks = test.masks is not None
    test = mask_split(test, size)
    grid = size // model.patch_size
    masks = test.masks.cpu()
    maps = {object_maps_name(size, grid): object_maps(masks, (grid, grid))}
    if has_masks and train is not None and train.masks is not None:
        maps[prior_maps_name(size, grid)] = prior_maps(train.masks.cpu(), (grid, grid), len(test))
    return [_drawn_maps_row(name, drawn, masks, keep_mass) for name, drawn in maps.items()]


def evaluate_own_mean_map(model, test: ImageDataset, keep_mass: float = KEEP_MASS, scale: float = 1.0,
                          layer: int = 0) -> dict[str, Any]:
    """The reference row `own_mean_map_name(model.name)`: the model's mean-of-heads map averaged over the test
    images (each normalized to mass 1) and drawn as every image's map, scored like a model's."""
    maps, test = attention_maps(model, test, scale=scale, layer=layer)
    mean = normalized(maps).mean(dim=(0, 1))
    drawn = mean[None, None].expand(len(test), 1, *mean.shape)
    return _drawn_maps_row(own_mean_map_name(model.name), drawn, test.masks.cpu(), keep_mass)


def _drawn_maps_row(name: str, drawn: torch.Tensor, masks: torch.Tensor, keep_mass: float) -> dict[str, Any]:
    """A row of the attention columns alone for maps drawn rather than read off a model."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(map_scores(drawn, masks, keep_mass))
    row.update(model=name, num_test=len(masks))
    return row


def object_maps_name(size: int, grid: int) -> str:
    return f"object masks as maps ({size} px, {grid} x {grid} patches)"


def prior_maps_name(size: int, grid: int) -> str:
    return f"mean train object as every map ({size} px, {grid} x {grid} patches)"


def own_mean_map_name(model_name: str) -> str:
    return f"{model_name}: its mean map as every map"


def foreground_probe_score(model, train: ImageDataset, test: ImageDataset,
                           batch_size: int = BATCH_SIZE) -> float | None:
    """`foreground_probe_iou` of the model's last-layer patch tokens at its training size, fit on the first
    `PROBE_IMAGES` train images and scored on the test split; None where either split has no masks."""
    if train.masks is None or test.masks is None:
        return None
    train = limit_dataset(train, PROBE_IMAGES, first=True)
    tokens = [_per_batch(model.patch_tokens, model, data, model.image_size, batch_size) for data in (train, test)]
    return foreground_probe_iou(tokens[0], train.masks.cpu(), tokens[1], test.masks.cpu())


def _per_batch(call, model, data: ImageDataset, size: int, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """call(x) over the dataset in batches, x its images through `eval_transform` at `size`; concatenated on the
    CPU."""
    mean, std = normalization_of(model)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(data)))
            outputs.append(call(eval_transform(data.get_batch(indices).to(model.device), size, mean, std)).cpu())
    return torch.cat(outputs)


def limit_dataset(dataset: ImageDataset, n: int | None, seed: int = 0, *, first: bool = False) -> ImageDataset:
    """At most n images: a seeded random subset in the original order (or the first n), masks and labels along."""
    if n is None or n >= len(dataset):
        return dataset
    if first:
        indices = torch.arange(n)
    else:
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    pick = (lambda t: None if t is None else t[indices.to(t.device)])
    files = None if dataset.files is None else [dataset.files[i] for i in indices.tolist()]
    made_from = None if dataset.made_from is None else {k: pick(v) for k, v in dataset.made_from.items()}
    return dataclasses.replace(dataset, images=pick(dataset.images), labels=pick(dataset.labels),
                               masks=pick(dataset.masks), files=files, made_from=made_from)


# ------------------------------------------------------------------------------------------------ tables
def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key.startswith(("knn_", "linear_")):
        return f"{100 * value:.1f}%"
    if key.startswith(("attn_", "nn_")) or key in ("object_area", "patch_fg_iou"):
        return f"{value:.3f}".replace("-0.000", "0.000")  # a slope of -1e-4 reads as none
    if key == "effective_rank":
        return f"{value:.1f}"
    if key == "embedding_std":
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [list(HEADERS)] + [[_cell(key, row[key]) for key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|---" + "|---:" * (len(HEADERS) - 1) + "|"]
    lines += ["| " + " | ".join(_cell(key, row[key]) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def format_json(rows: list[dict[str, Any]]) -> str:
    """A JSON list of the rows; NaN becomes null (JSON has no NaN)."""
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]
    return json.dumps(clean, indent=2)


def evaluate_all(models: list, train: ImageDataset, test: ImageDataset, *, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE, label_fraction: float = LABEL_FRACTION, seed: int = 0,
                 baselines: bool = True, cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
                 progress: bool = False, attention_scale: float = 1.0, attention_layer: int = 0,
                 random_inits: int = RANDOM_INITS, own_mean_maps: bool = False) -> list[dict[str, Any]]:
    """The rows of `LoadedModel`s, then (with `baselines`) raw pixels, one random-init row per distinct shape
    among the models (the mean of `random_inits` ViTs seeded seed, seed + 1, ...) and the reference maps per
    distinct patch grid (`evaluate_object_maps`), in the models' order; last (with `own_mean_maps`) each model's
    own mean map as every map (`evaluate_own_mean_map`)."""
    from dinotwins.models.load import LoadedModel

    options = dict(k=k, temperature=temperature, label_fraction=label_fraction, seed=seed)
    shared = dict(cache_dir=cache_dir, progress=progress, attention_scale=attention_scale,
                  attention_layer=attention_layer)
    models = list(models)
    rows = [evaluate_model(m, train, test, **shared, **options) for m in models]
    if baselines:
        rows.append(evaluate_raw_pixels(train, test, **options))
        randoms: dict[str, LoadedModel] = {}
        for m in models:  # one per shape: settings that leave the weights alone (drop path) do not count
            random_model = LoadedModel.random_like(m, seed=seed)
            randoms.setdefault(random_model.name, random_model)
        for name, first in randoms.items():
            seeded = [first, *(LoadedModel.random_like(first, seed=seed + i) for i in range(1, random_inits))]
            scored = [evaluate_model(r, train, test, **shared, **options) for r in seeded]
            rows.append(mean_row(scored, random_init_name(name, random_inits)))
        grids = {}  # one per patch grid at the attention's input size
        for m in models:
            size = m.input_size(attention_scale)
            grids.setdefault(object_maps_name(size, size // m.patch_size), m)
        for m in grids.values():
            rows += evaluate_object_maps(m, test, scale=attention_scale, train=train)
    if own_mean_maps:
        rows += [evaluate_own_mean_map(m, test, scale=attention_scale, layer=attention_layer) for m in models]
    return rows
