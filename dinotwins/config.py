"""Run configuration: one dataclass per concern, YAML presets, overrides converted once at the edge.

Precedence, lowest first: dataclass defaults < `--preset NAME` (dinotwins/presets/NAME.yaml) < `--config FILE`
< command-line flags and `--set key.sub=value`. The resolved config is written next to each run as YAML.
Unknown keys and wrong types are a `UserError` naming the key, never silently ignored.

The sections: `model` (models/config.py), `augment` (data/augment_config.py), `optim` (here), and one per
registered objective, named like it (`dino`, `barlow`, `hybrid`), whose dataclass the objective's own file defines
(`Objective.config_class`), plus the ingredient sections the registry lists (`ibot`). This module imports no torch: `build_config` reads and checks the common settings
first, then each objective's section, its class looked up by name in the registry, which imports that
objective's module (and torch) only then. A typo in a flag or a common setting is reported without torch.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dinotwins.data.augment_config import AugmentConfig
from dinotwins.errors import UserError
from dinotwins.models.config import ModelConfig
from dinotwins.objectives import METHODS, SECTIONS, section_class

PRESET_DIR = Path(__file__).parent / "presets"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes above that replay CUDA graphs on a GPU


@dataclass
class OptimConfig:
    """AdamW with DINO's schedules: linear lr warm-up then cosine; weight decay cosine 0.04 -> 0.4."""

    base_lr: float = 5e-4  # per 256 images; scaled by global batch / 256 (DINO)
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0  # clipped to a tenth of the run for short runs
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # max global grad norm; 0 disables
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class TrainConfig:
    method: str = "dino"
    data: str = "synthetic"
    epochs: float = 100.0
    max_steps: int | None = None  # stop (and end every schedule) here if set
    batch_size: int = 64  # per process
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 where the device does it fast) | bf16 | fp32
    compile: bool = False  # torch.compile the student and teacher (README, Performance: what it measured)
    # torch.compile's mode: default | reduce-overhead (CUDA graphs on a GPU: the step's kernels launched as one
    # replay, for a step bound by the host) | max-autotune | max-autotune-no-cudagraphs. Read only with compile.
    compile_mode: str = "default"
    # auto: fused scaled-dot-product attention on GPU; on a CPU the faster of fused and explicit softmax(q k^T) v,
    # timed on one attention layer when the run starts (models/backbone.py). Same maths.
    attention: str = "auto"  # auto | fused | explicit
    # One backward per crop resolution (global crops, then local crops; under DDP the reverse) instead of one over
    # the summed loss: the same gradients, one resolution's activations alive at a time (Objective.compute_gradients).
    backward_per_resolution: bool = True
    # DINOv2's sequence packing: all crops of an image in one sequence, one forward pass with a block-diagonal
    # attention mask (models/tokens.py); one joint backward. The same loss and gradients (tested), another speed.
    # auto: whichever of packed and separate passes times faster on the run's first batch when it starts
    # (training/crop_packing.py); the run's config.yaml keeps the choice.
    packed_crops: bool | str = False  # false | true | auto
    # Processes decoding the next batches while the step runs (data/loader.py); -1: none for data held in memory,
    # 4 (at most the CPUs) for data decoded or rendered per batch (large folders, large generated sets).
    data_workers: int = -1
    save_every: int = 500  # steps between resumable checkpoints
    log_every: int = 10  # steps between metrics.jsonl rows
    keep_checkpoints: int = 2  # resumable checkpoints kept, newest first
    # Every this many steps also keep the exported weights as exports/step_XXXXXXXX.safetensors (0: never), so
    # a learning curve can be scored afterwards with `python -m dinotwins.evaluate` on each file.
    export_every: int = 0
    export_dtype: str = "float32"  # float32 | float16 for the exported weights
    stop_on_collapse: bool = False
    # A run folder whose newest good checkpoint starts this run (modules only, position embeddings resized to this
    # image size; fresh optimizer, schedules from step 0): DINOv2's short high-resolution phase (warm_start.py).
    init_from: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    # One section per registered objective, by its name (config.yaml: `dino:`, `barlow:`, `hybrid:` at the top
    # level); each objective reads the ones it needs (the hybrid: all three).
    objectives: dict[str, Any] = field(default_factory=lambda: {name: section_class(name)() for name in SECTIONS})
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> None:
        """UserError naming the first bad setting; each objective's section checks itself (`build_config`)."""
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        checks = [
            (self.batch_size >= 2, f"--batch-size must be at least 2, got {self.batch_size}"),
            (self.epochs > 0, f"--epochs must be positive, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}"),
            (self.save_every >= 1, f"--save-every must be at least 1 step, got {self.save_every}"),
            (self.export_every >= 0, f"--export-every must be 0 (off) or a step count, got {self.export_every}"),
            (self.data_workers >= -1, f"data_workers must be -1 (auto), 0 or a process count, got {self.data_workers}"),
            (self.log_every >= 1, f"log_every must be at least 1 step, got {self.log_every}"),
            (self.keep_checkpoints >= 2, f"keep_checkpoints must be at least 2, got {self.keep_checkpoints}"),
            (self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device!r}"),
            (self.precision in ("auto", "bf16", "fp32"), f"precision must be auto, bf16 or fp32, got {self.precision!r}"),
            (self.compile_mode in COMPILE_MODES,
             f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}"),
            (self.attention in ("auto", "fused", "explicit"),
             f"attention must be auto, fused or explicit, got {self.attention!r}"),
            (self.packed_crops is True or self.packed_crops is False or self.packed_crops == "auto",
             f"packed_crops must be true, false or auto, got {self.packed_crops!r}"),
            (self.export_dtype in ("float32", "float16"), f"export_dtype must be float32 or float16, got {self.export_dtype!r}"),
            (self.optim.base_lr > 0, f"optim.base_lr must be positive, got {self.optim.base_lr}"),
            (self.augment.n_local >= 0, f"augment.n_local must be >= 0, got {self.augment.n_local}"),
            (self.model.reg_tokens >= 0, f"model.reg_tokens must be 0 (none) or a token count, got {self.model.reg_tokens}"),
            (self.model.pos_embed in ("learn", "none"),
             f"model.pos_embed must be learn or none, got {self.model.pos_embed!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        self.augment.validate()
        if self.augment.global_size != self.model.image_size:
            raise UserError(f"augment.global_size {self.augment.global_size} differs from model.image_size "
                            f"{self.model.image_size}; set both to the same size")
        patch = self.model.patch_size
        if self.model.image_size < 2 * patch:
            raise UserError(f"model.image_size {self.model.image_size} holds fewer than 2 x 2 patches of {patch} px "
                            f"(the stored images are that size too); raise the image size to at least {2 * patch} "
                            f"or lower model.patch_size")
        for size in (self.augment.global_size, self.augment.local_size):
            if size % patch:
                raise UserError(f"crop size {size} is not a multiple of patch size {patch}")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; use one of {', '.join(available_presets())}")
    return read_yaml(path)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; check the path") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def dotted_to_nested(assignments: list[str]) -> dict[str, Any]:
    """['dino.out_dim=2048', 'epochs=3'] -> {'dino': {'out_dim': 2048}, 'epochs': 3}; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(raw) if raw else None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def build_config(data: dict[str, Any]) -> TrainConfig:
    """The checked `TrainConfig` of nested settings (as config.yaml holds them)."""
    common = {key: value for key, value in data.items() if key not in SECTIONS}
    cfg = _from_dict(TrainConfig, common, "", extra_keys=SECTIONS, objectives={})
    cfg.validate()  # the common settings, before anything imports torch
    for name in SECTIONS:
        section = _from_dict(section_class(name), data.get(name) or {}, f"{name}.")
        section.validate()
        cfg.objectives[name] = section
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of YAML-safe values (tuples become lists); a TrainConfig's objective sections at the
    top level under their names, as config.yaml holds them."""
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    out: dict[str, Any] = {}
    for key, value in plain(dataclasses.asdict(cfg)).items():
        if key == "objectives":
            out.update(value)
        else:
            out[key] = value
    return out


def _from_dict(cls: type, data: dict[str, Any], prefix: str, extra_keys: tuple[str, ...] = (), **given: Any) -> Any:
    """`cls` from a mapping, each value coerced to its field's type; `given` fields are set as they are, not read
    from `data`; `extra_keys` are valid keys read elsewhere (named in the unknown-key error)."""
    if not isinstance(data, dict):
        raise UserError(f"config key {prefix.rstrip('.') or 'root'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(given)
    unknown = sorted(set(data) - names)
    if unknown:
        valid = ", ".join(sorted(names | set(extra_keys)))
        raise UserError(f"unknown config key {prefix}{unknown[0]}; valid keys here: {valid}")
    kwargs = dict(given)
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) > 1:  # e.g. bool | str: the first type the value is
            for option in options:
                try:
                    return _coerce(value, option, key)
                except UserError:
                    pass
            raise UserError(f"config key {key} must be one of {', '.join(o.__name__ for o in options)}, "
                            f"got {value!r}")
        hint = options[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key} must be a list, got {value!r}")
        inner = args[0] if args else float
        return tuple(_coerce(v, inner, key) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {key} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string: take it as the number it spells
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"config key {key} must be a number, got {value!r}")
        if hint is int and float(value) != int(value):
            raise UserError(f"config key {key} must be a whole number, got {value!r}")
        return hint(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"config key {key} must be a string, got {value!r}")
        return value
    return value
