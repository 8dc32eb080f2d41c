"""The `scenes` dataset: photographed and drawn objects cut out by their alpha, pasted on photographic backgrounds.

What it is: each image is a random crop of a background photograph (or texture) with one object pasted on it at
a random scale, position and flip. The label is the object's category, the mask is exactly the object's pixels
(its alpha channel, resized with the object, cut at one half). Objects are Debian's `tuxpaint-stamps-default`
(PNG cut-outs with alpha under `STAMPS_DIR/<category>/...`: real photos of animals, food and plants, and drawn
vehicles, buildings and signs), grouped into the `CATEGORIES` below (each with at least `MIN_OBJECTS` files).

Backgrounds (decision): the photographs among Debian's `mate-backgrounds` (its `nature/` folder) and
`plasma-workspace-wallpapers` (the wallpapers that are photographs, listed in `PLASMA_PHOTOS`), plus
scikit-image's three textures (brick, grass, gravel). scikit-image's photos (the cat, the coffee cup, the
astronaut, ...) are kept out on purpose: they are the explorer's example photos, so a model never sees them in
training. These packages are the photographic wallpapers Debian ships; the others (gnome-backgrounds,
ukui-wallpapers, desktop-base) are illustrations.

Splits: train and test use disjoint object files (a quarter of each category's files, chosen by a hash of the file's
path, is test only) and disjoint backgrounds (every fourth background in sorted order is test only). Labels are
balanced and shuffled. Everything is deterministic by (split, index): image i is drawn from its own generator
seeded by (split seed, i), so the same spec gives the same pixels on every call and machine, and any image can be
rendered alone.

Pre-rendered, not rendered per batch (decision): the train split is rendered once at load time (about 1 ms
per 64 px image on one core) and held in memory like any other dataset, so training keeps its exact-resume
guarantees and its data path; the per-epoch variety comes from the multi-crop augmentation on top. `scenes:N`
sets the number of train images (default `TRAIN_SIZE`); the test split always has `TEST_SIZE`, so figures on it
compare across N.

What it is not: a benchmark of anything but this project's models; see README, Data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dinotwins.data import image_count
from dinotwins.data.dataset import ImageDataset
from dinotwins.data.folder import IN_MEMORY_BUDGET
from dinotwins.errors import UserError

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
STAMPS_PACKAGE = "tuxpaint-stamps-default"
MATE_NATURE_DIR = Path("/usr/share/backgrounds/mate/nature")
PLASMA_DIR = Path("/usr/share/wallpapers")
BACKGROUND_PACKAGES = "mate-backgrounds and plasma-workspace-wallpapers"
# The plasma wallpapers that are photographs (the rest are illustrations).
PLASMA_PHOTOS = ("BytheWater", "ColdRipple", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey", "OneStandsOut",
                 "Path", "summer_1am")
SKIMAGE_TEXTURES = ("brick.png", "grass.png", "gravel.png")

# Category -> stamp sub-folders (relative to STAMPS_DIR) whose PNGs, recursively, are its objects. The first
# matching rule wins, so "animals/mammals/aquatic" goes to sea animal, not mammal.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sea animal", ("animals/fish", "animals/shellfish", "animals/mammals/aquatic")),
    ("bird", ("animals/birds",)),
    ("insect", ("animals/insects",)),
    ("mammal", ("animals/mammals", "animals/marsupials")),
    ("fruit", ("food/fruit",)),
    ("vegetable", ("food/vegetables", "food/nuts", "food/spices")),
    ("plant", ("plants",)),
    ("vehicle", ("vehicles",)),
    ("household", ("household",)),
    ("building", ("town/houses", "town/monuments")),
    ("road sign", ("town/roadsigns",)),
)
CLASSES = tuple(name for name, _ in CATEGORIES)
MIN_OBJECTS = 8  # per category: at least 2 test and 6 train objects
TEST_SHARE = 0.25  # of each category's object files
TRAIN_SIZE = 24000
TEST_SIZE = 2000
SEEDS = {"train": 0, "test": 1}
MIN_SIZE = 16  # px; smaller images leave an object a few pixels
OBJECT_SIDE = (0.55, 0.95)  # the object's longer side as a share of the image side (most crops meet the object)
BACKGROUND_SIDE = (0.35, 1.0)  # the background crop's side as a share of the background's shorter side
PROCEDURAL_SHARE = 0.3  # images whose background is generated noise rather than a photograph
MADE_FROM = ("object", "background")  # what `ImageDataset.made_from` records per image
SOURCE_SIDE = 256  # objects and backgrounds are kept at most this large (px) in memory
PAIRED_RENDERINGS = 2  # scenes-paired: backgrounds per train image


@dataclass(frozen=True)
class SceneSources:
    """Decoded objects (RGBA uint8 arrays cropped to their alpha), their labels, and background arrays."""

    objects: tuple[np.ndarray, ...]
    object_labels: tuple[int, ...]
    object_files: tuple[str, ...]
    backgrounds: tuple[np.ndarray, ...]
    background_files: tuple[str, ...]


def load_paired(spec: str, arg: str, split: str, size: int, budget: int | None = None) -> ImageDataset:
    """`scenes-paired[:N]`'s split: `load_generated`'s, each train image also rendered on a second generated
    background (`ImageDataset.renderings`), so that training crops an image's views from both and the object is
    all its views share: background augmentation, as in Zhao et al. 2021 and Ryali et al. 2021 (README, Results).
    The test split is scenes' own."""
    return load(spec, arg, split, size, budget, generated_train=True, renderings=PAIRED_RENDERINGS)


def load_paired_photos(spec: str, arg: str, split: str, size: int, budget: int | None = None) -> ImageDataset:
    """`scenes-paired-photos[:N]`'s split: `load`'s (photographed backgrounds), each train image also rendered on a
    second background drawn like the first (another training photograph, or generated for `PROCEDURAL_SHARE`), so
    the views disagree on the background as in `scenes-paired` while the clutter the maps must ignore is
    photographic, as in the test split. The test split is scenes' own."""
    return load(spec, arg, split, size, budget, renderings=PAIRED_RENDERINGS, photo_pairs=True)


def load_generated(spec: str, arg: str, split: str, size: int, budget: int | None = None) -> ImageDataset:
    """`scenes-generated[:N]`'s split: `load`'s, with every train image's background generated (same objects,
    places, scales and labels), since with a few dozen photographs recurring thousands of times models learned to
    tell the photographs apart instead of finding the object (README, Results). The test split is scenes' own, so
    maps are still scored on photographs."""
    return load(spec, arg, split, size, budget, generated_train=True)


def load(spec: str, arg: str, split: str, size: int, budget: int | None = None, *,
         generated_train: bool = False, renderings: int = 1, photo_pairs: bool = False) -> ImageDataset:
    """`scenes[:N]`'s split: images uint8 (N, 3, S, S), labels, masks bool (N, S, S) and what each image was made
    from (`MADE_FROM`), with `renderings` > 1 each image's renderings too; rendered per batch instead (without masks
    and made_from) when N images and their renderings would not fit `budget` bytes. A second rendering's background
    is generated, or with `photo_pairs` drawn like the first from another photograph."""
    n_train = image_count(spec, arg, TRAIN_SIZE)
    if size < MIN_SIZE:
        raise UserError(f"scenes images need at least {MIN_SIZE} px, got {size}; raise the image size")
    n = n_train if split == "train" else TEST_SIZE
    sources, seed = scene_sources(split), SEEDS[split]
    share = 1.0 if generated_train and split == "train" else PROCEDURAL_SHARE
    renderings = renderings if split == "train" else 1
    labels = scene_labels(n, seed)
    limit = IN_MEMORY_BUDGET if budget is None else budget
    if n * renderings * 3 * size * size > limit:  # each batch rendered when asked (rendering 0 unless training)
        def render(indices: Tensor, every_rendering: bool = False) -> Tensor:
            return render_indices(sources, labels, indices, size, seed, share, renderings if every_rendering else 1,
                                  photo_pairs)[0]
        return ImageDataset(spec, None, torch.from_numpy(labels), list(CLASSES), split=split, storage_size=size,
                            render=render)
    images, masks, made_from = render_indices(sources, labels, torch.arange(n), size, seed, share, renderings,
                                              photo_pairs)
    paired = renderings > 1
    return ImageDataset(spec, images[:, 0] if paired else images, torch.from_numpy(labels), list(CLASSES),
                        masks=masks, split=split, storage_size=size, renderings=images if paired else None,
                        made_from=dict(zip(MADE_FROM, made_from.unbind(1))))


def scene_labels(n: int, seed: int) -> np.ndarray:
    """int64 (n,): balanced labels, shuffled by (seed, n)."""
    master = np.random.default_rng([seed, n])
    return master.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)


def render_indices(sources: SceneSources, labels: np.ndarray, indices: Tensor, size: int, seed: int,
                   procedural_share: float, renderings: int = 1, photo_pairs: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(uint8 (B, 3, S, S), bool (B, S, S), int64 (B, 2)): images `indices` of the split whose labels are
    `labels`, their masks, and what each was made from (`MADE_FROM`: the index of its object in
    `sources.objects` and of its background in `sources.backgrounds`, -1 for a generated one); image i comes from
    its own generator, seeded by (seed, i), so any image renders alone; `procedural_share` of them on a generated
    background. With `renderings` R > 1 the images are (B, R, 3, S, S): the first as with R = 1, the others the
    same object, place, scale and flip on generated backgrounds drawn from generators seeded (seed, i, r), or with
    `photo_pairs` on backgrounds drawn like the first from another of `sources.backgrounds`."""
    by_class = [[i for i, k in enumerate(sources.object_labels) if k == c] for c in range(len(CLASSES))]
    images = np.empty((len(indices), renderings, size, size, 3), dtype=np.uint8)
    masks = np.empty((len(indices), size, size), dtype=bool)
    made_from = np.empty((len(indices), len(MADE_FROM)), dtype=np.int64)
    for row, i in enumerate(indices.tolist()):
        rng = np.random.default_rng([seed, i])
        choices = by_class[labels[i]]
        obj = choices[rng.integers(len(choices))]
        background = int(rng.integers(len(sources.backgrounds)))
        more = tuple((g, _other_background(sources.backgrounds, background, g) if photo_pairs else None)
                     for g in (np.random.default_rng([seed, i, r]) for r in range(1, renderings)))
        images[row], masks[row], photo = render_one(sources.objects[obj], sources.backgrounds[background], size,
                                                    rng, procedural_share, more)
        made_from[row] = obj, background if photo else -1
    out = torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()
    return out[:, 0] if renderings == 1 else out, torch.from_numpy(masks), torch.from_numpy(made_from)


def _other_background(backgrounds: tuple[np.ndarray, ...], taken: int, rng: np.random.Generator) -> np.ndarray | None:
    """One of `backgrounds` other than `taken`, drawn from `rng`; None (a generated one) where there is no other."""
    if len(backgrounds) < 2:
        return None
    other = int(rng.integers(len(backgrounds) - 1))
    return backgrounds[other + (other >= taken)]


def render_one(obj: np.ndarray, background: np.ndarray, size: int, rng: np.random.Generator,
               procedural_share: float,
               more_backgrounds: tuple[tuple[np.random.Generator, np.ndarray | None], ...] = ()
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(uint8 (R, S, S, 3) images, bool (S, S) mask, whether the first background is `background`): `obj` (RGBA)
    at a random scale, place and flip on a random crop of `background` (RGB) or, with probability
    `procedural_share`, a generated background; then, R - 1 times, the same object on a further background, one
    per (generator, background) of `more_backgrounds`: drawn like the first from that background, or generated
    where it is None."""
    canvas, photo = background_canvas(background, size, rng, procedural_share)
    canvases = np.stack([canvas, *(_procedural_background(size, more) if other is None else
                                   background_canvas(other, size, more, procedural_share)[0]
                                   for more, other in more_backgrounds)])

    longer = max(2, round(size * rng.uniform(*OBJECT_SIDE)))
    oh, ow = obj.shape[:2]
    scale = longer / max(oh, ow)
    new_w, new_h = max(1, round(ow * scale)), max(1, round(oh * scale))
    # Premultiplied alpha ("RGBa") so the resize does not bleed the transparent pixels' colour into the edges.
    pasted = Image.fromarray(obj, "RGBA").convert("RGBa").resize((new_w, new_h), Image.Resampling.BILINEAR)
    pasted = np.asarray(pasted.convert("RGBA"), dtype=np.float32)
    if rng.random() < 0.5:
        pasted = pasted[:, ::-1]
    y, x = rng.integers(size - new_h + 1), rng.integers(size - new_w + 1)
    alpha = pasted[..., 3:] / 255.0  # (h, w, 1)
    region = canvases[:, y:y + new_h, x:x + new_w]
    region[:] = alpha * pasted[..., :3] + (1 - alpha) * region
    mask = np.zeros((size, size), dtype=bool)
    mask[y:y + new_h, x:x + new_w] = alpha[..., 0] >= 0.5
    return np.clip(canvases + 0.5, 0, 255).astype(np.uint8), mask, photo


def background_canvas(background: np.ndarray, size: int, rng: np.random.Generator,
                      procedural_share: float) -> tuple[np.ndarray, bool]:
    """(float32 (S, S, 3) in [0, 255], whether it is `background`): a random crop of `background` (RGB), turned a
    random quarter and flipped, its colours rotated by a random hue and scaled in brightness and saturation; or, with
    probability `procedural_share`, smooth coloured noise with stripes and grain instead."""
    if rng.random() < procedural_share:
        return _procedural_background(size, rng), False
    height, width = background.shape[:2]
    side = int(min(height, width) * rng.uniform(*BACKGROUND_SIDE))
    top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
    canvas = Image.fromarray(background[top:top + side, left:left + side]).resize((size, size),
                                                                                   Image.Resampling.BILINEAR)
    canvas = np.rot90(np.asarray(canvas, dtype=np.float32), k=int(rng.integers(4)))
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    return _recolour(canvas, rng), True


def _recolour(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hue rotation by a random angle (YIQ chroma plane), saturation x U(0.3, 1.3), brightness x U(0.6, 1.3)."""
    yiq = rgb @ _RGB_TO_YIQ.T
    angle, saturation = 2 * np.pi * rng.random(), rng.uniform(0.3, 1.3)
    cos, sin = np.cos(angle) * saturation, np.sin(angle) * saturation
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = cos * i - sin * q, sin * i + cos * q
    return np.clip((yiq @ _YIQ_TO_RGB.T) * rng.uniform(0.6, 1.3), 0, 255)


def _procedural_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth coloured noise, faint stripes at a random angle and fine grain: float32 (S, S, 3) in [0, 255]."""
    low = int(rng.integers(2, 7))  # colour cells across the image: smooth, like an out-of-focus scene
    blobs = np.asarray(Image.fromarray((rng.random((low, low, 3)) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    coords = np.arange(size, dtype=np.float32) / size
    theta, freq, phase = np.pi * rng.random(), rng.uniform(2, 10), 2 * np.pi * rng.random()
    along = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    stripes = 127.5 + 127.5 * np.sin(2 * np.pi * freq * along + phase)
    grain = rng.random((size, size)) * 255
    return (0.75 * blobs + 0.2 * stripes[..., None] + 0.05 * grain[..., None]).astype(np.float32)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@lru_cache(maxsize=2)
def scene_sources(split: str) -> SceneSources:
    """The split's objects and backgrounds, decoded once per process."""
    objects, labels, files = [], [], []
    for path, label in split_objects(split):
        array = _load_object(path)
        if array is not None:
            objects.append(array)
            labels.append(label)
            files.append(str(path.relative_to(STAMPS_DIR)))
    backgrounds = split_backgrounds(split)
    return SceneSources(tuple(objects), tuple(labels), tuple(files),
                        tuple(_load_background(p) for p in backgrounds), tuple(str(p) for p in backgrounds))


def split_objects(split: str) -> list[tuple[Path, int]]:
    """(file, label) of the split's objects: per category, the files whose path hash ranks in the first
    `TEST_SHARE` are test, the rest train."""
    if not STAMPS_DIR.is_dir():
        raise UserError(f"scenes needs the object cut-outs of Debian's {STAMPS_PACKAGE} in {STAMPS_DIR}; install "
                        f"it (apt-get install {STAMPS_PACKAGE}, or make setup)")
    taken: set[Path] = set()
    chosen = []
    for label, (name, folders) in enumerate(CATEGORIES):
        files = sorted({f for folder in folders for f in (STAMPS_DIR / folder).rglob("*.png")} - taken)
        taken.update(files)
        if len(files) < MIN_OBJECTS:
            raise UserError(f"scenes category {name!r} has {len(files)} object files in {STAMPS_DIR} (at least "
                            f"{MIN_OBJECTS} needed for disjoint train and test objects); reinstall {STAMPS_PACKAGE}")
        ranked = sorted(files, key=lambda f: _path_hash(f.relative_to(STAMPS_DIR)))
        n_test = max(2, round(TEST_SHARE * len(files)))
        part = ranked[:n_test] if split == "test" else ranked[n_test:]
        chosen += [(f, label) for f in sorted(part)]
    return chosen


def split_backgrounds(split: str) -> list[Path]:
    """The split's background files: every fourth of all of them (sorted by name) is test, the rest train."""
    files = sorted(MATE_NATURE_DIR.glob("*.jpg")) if MATE_NATURE_DIR.is_dir() else []
    for name in PLASMA_PHOTOS:
        images = sorted((PLASMA_DIR / name / "contents" / "images").glob("*.*"))
        if images:  # the largest rendition of each wallpaper
            files.append(max(images, key=lambda p: p.stat().st_size))
    if len(files) < 8:
        raise UserError(f"scenes needs the background photographs of Debian's {BACKGROUND_PACKAGES} (found "
                        f"{len(files)} of them); install them (apt-get install mate-backgrounds "
                        f"plasma-workspace-wallpapers, or make setup)")
    files = sorted(files, key=lambda p: str(p).lower()) + _skimage_textures()
    return [f for i, f in enumerate(files) if (i % 4 == 3) == (split == "test")]


def _skimage_textures() -> list[Path]:
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in SKIMAGE_TEXTURES if (folder / name).is_file()]


def _path_hash(relative: Path) -> int:
    return int.from_bytes(hashlib.blake2b(str(relative).encode(), digest_size=8).digest(), "little")


def _load_object(path: Path) -> np.ndarray | None:
    """RGBA uint8 array of the stamp cropped to its alpha's bounding box, longer side at most SOURCE_SIDE; None
    for a file that cannot be read or has no transparent surround (not a cut-out)."""
    try:
        with Image.open(path) as img:
            rgba = img.convert("RGBA")
    except Exception:  # noqa: BLE001 - an unreadable stamp is left out, as any unreadable image is
        return None
    box = rgba.getchannel("A").point(lambda a: 255 if a >= 128 else 0).getbbox()
    if box is None:
        return None
    rgba = rgba.crop(box)
    if np.asarray(rgba.getchannel("A")).mean() > 0.97 * 255:  # an opaque rectangle: nothing to cut out
        return None
    rgba = rgba.convert("RGBa")
    rgba.thumbnail((SOURCE_SIDE, SOURCE_SIDE), Image.Resampling.LANCZOS)
    return np.array(rgba.convert("RGBA"))


def _load_background(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.draft("RGB", (SOURCE_SIDE * 2, SOURCE_SIDE * 2))
        rgb = img.convert("RGB")
    scale = SOURCE_SIDE * 2 / min(rgb.size)
    if scale < 1:
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
    return np.array(rgb)
