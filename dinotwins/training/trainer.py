"""The training loop: one `Trainer` for every registered objective, on CPU, one GPU or torchrun.

What it does per step: fetch a batch by index (a pure function of seed, epoch and position), build the
multi-crop views with a generator seeded by (seed, step, rank), set the lr and weight decay and the objective's own
values from the global step, forward/backward under bf16 autocast where the device does bf16 fast, refuse a
non-finite loss or gradient before the update, clip, let the objective act before and after the optimizer step
(DINO: last-layer freeze, EMA teacher). Because every random draw is seeded from the step, resuming needs only the
saved modules, optimizer and step: the resumed run is the uninterrupted one.

What it is not: no method, data or loss maths (the objective from `dinotwins.objectives`, the data source from
`dinotwins.data`); I/O is limited to the run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dinotwins.config import CUDA_GRAPH_MODES, TrainConfig, to_dict
from dinotwins.data import load_dataset
from dinotwins.data.augment import MultiCrop
from dinotwins.data.loader import StepBatches, prefetched, workers_for
from dinotwins.data.sampler import EpochSampler
from dinotwins.errors import TrainingInterrupted, TrainingStopped, UserError
from dinotwins.files import atomic_write
from dinotwins.models.backbone import fused_attention_for, set_fused_attention
from dinotwins.models.export import EXPORT_NAME, export_backbone, export_path
from dinotwins.objectives import build_objective
from dinotwins.objectives.collapse_bands import embedding_band
from dinotwins.schedules import RunLength, cosine, scaled_lr
from dinotwins.training import distributed, precision
from dinotwins.training.checkpoint import CHECKPOINT_DIR, latest_good, list_checkpoints, save_checkpoint
from dinotwins.training.collapse import CollapseMonitor
from dinotwins.training.crop_packing import packed_is_faster
from dinotwins.training.runlog import RunLog
from dinotwins.training.stop_signal import StopSignals
from dinotwins.training.warm_start import load_init_state
from dinotwins.transfer import to_device


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of every random draw at one step on one rank (views, drop-path): a 32-bit hash of the three numbers,
    because torch's CPU generator keeps only the low 32 bits of a seed."""
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def param_groups(module: torch.nn.Module) -> list[dict[str, Any]]:
    """DINO's grouping: no weight decay on biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False}]


class Trainer:
    """Holds the run's state (modules, optimizer, step) and runs steps; `run()` trains to the end."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        if cfg.precision == "auto":
            precision.agree_across_ranks()  # a timing decides `auto` on a CPU: every rank takes rank 0's
        self.autocast_dtype = precision.pick_precision(cfg.precision, self.device)
        self._check_out_dir(resume)

        self.dataset = load_dataset(cfg.data, "train", image_size=cfg.model.image_size)
        self.sampler = EpochSampler(len(self.dataset), cfg.batch_size, cfg.seed, self.dist.rank,
                                    self.dist.world_size)
        steps_per_epoch = self.sampler.batches_per_epoch
        full = math.ceil(cfg.epochs * steps_per_epoch)
        self.length = RunLength(steps_per_epoch, min(full, cfg.max_steps) if cfg.max_steps else full)
        images = self.dataset.training_images
        self.images_on_device = images.to(self.device) if images is not None else None

        torch.manual_seed(cfg.seed)
        self.objective = build_objective(cfg).to(self.device)
        student: torch.nn.Module = self.objective.student
        if self.dist.enabled:
            if self.device.type == "cuda":  # SyncBatchNorm is GPU-only; on CPU a head's BN stays per rank
                student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
                self.objective.student = student
            student = DistributedDataParallel(student, device_ids=[self.device.index] if self.device.type == "cuda"
                                              else None)
        self._ddp = student if isinstance(student, DistributedDataParallel) else None
        tokens = 1 + (cfg.model.image_size // cfg.model.patch_size) ** 2  # a global crop's sequence
        self.fused_attention = distributed.same_on_every_rank(fused_attention_for(
            cfg.attention, self.device, self.objective.student.backbone, tokens, 2 * cfg.batch_size,
            self.autocast_dtype, compiled=cfg.compile))
        set_fused_attention(self.objective, self.fused_attention)
        # The run keeps the path it measured (config.yaml), so a resumed run computes exactly as before.
        self.cfg = cfg = dataclasses.replace(cfg, attention="fused" if self.fused_attention else "explicit")
        # dynamic=False: the student is called once per crop size; each size gets its own static graph.
        self.student_runner = torch.compile(student, dynamic=False, mode=cfg.compile_mode) if cfg.compile else student
        teacher = self.objective.teacher
        self.teacher_runner = (torch.compile(teacher, dynamic=False, mode=cfg.compile_mode)
                               if cfg.compile and teacher is not None else teacher)
        # CUDA graphs replay into the same memory: each step tells them a new iteration begins
        self._graphed = cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES
        # fused: one kernel over all parameters, on a CPU as on a GPU (the faster form on both)
        self.optimizer = torch.optim.AdamW(param_groups(self.objective.student), lr=0.0, betas=cfg.optim.betas,
                                           fused=True)
        self.multicrop = MultiCrop(cfg.augment)
        if cfg.packed_crops == "auto":  # measured once; config.yaml keeps the choice for a resumed run
            self.cfg = cfg = dataclasses.replace(cfg, packed_crops=self._packed_crops_measured())
        self.log = RunLog(self.out / "metrics.jsonl")
        bands = [*self.objective.collapse_bands(cfg), embedding_band(self.objective.student.backbone.num_features)]
        self.monitor = CollapseMonitor(bands, warmup_steps=max(self.length.total_steps // 10, 1))
        self.step = 0
        if resume:
            self._resume()
        elif cfg.init_from:  # the trained modules of another run, at this run's size (training/warm_start.py)
            load_init_state(self.objective, cfg.init_from, self.device)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())

    # ----------------------------------------------------------------------------------------- schedules
    def schedule(self, step: int) -> dict[str, float]:
        """Every value set from the step: lr and weight decay (DINO's schedules), then the objective's own."""
        cfg, length = self.cfg, self.length
        warmup = length.phase_steps(cfg.optim.warmup_epochs, at_most_one_in=10)
        peak_lr = scaled_lr(cfg.optim.base_lr, cfg.batch_size * self.dist.world_size)
        return {
            "lr": cosine(step, length.total_steps, peak_lr, cfg.optim.min_lr, warmup),
            "weight_decay": cosine(step, length.total_steps, cfg.optim.weight_decay, cfg.optim.weight_decay_end),
            **self.objective.step_values(step, length),
        }

    def _packed_crops_measured(self) -> bool:
        """`packed_crops: auto`: rank 0's timing of both forms on the first batch (training/crop_packing.py)."""
        global_views, local_views = self.multicrop(self.batch(0), torch.Generator().manual_seed(self.cfg.seed))
        faster = packed_is_faster(self.objective, global_views, local_views, self.schedule(0), self.autocast)
        return distributed.same_on_every_rank(faster)

    # ----------------------------------------------------------------------------------------- one step
    def train_step(self, images: torch.Tensor, step: int) -> dict[str, float]:
        """One optimisation step on a uint8 batch (B, C, H, W), or (B, R, C, H, W) renderings; returns the logged
        values."""
        cfg = self.cfg
        seed = step_seed(cfg.seed, step, self.dist.rank)
        torch.manual_seed(seed)
        global_views, local_views = self.multicrop(images, torch.Generator().manual_seed(seed))
        values = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = values["lr"]
            group["weight_decay"] = values["weight_decay"] if group["apply_wd"] else 0.0

        self.objective.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self._graphed:
            torch.compiler.cudagraph_mark_step_begin()
        loss, logs = self.objective.compute_gradients(
            self.student_runner, global_views, local_views, values, distributed=self.dist.enabled,
            teacher=self.teacher_runner, autocast=self.autocast,
            no_sync=self._ddp.no_sync if self._ddp is not None else None,
            per_resolution=cfg.backward_per_resolution, packed=cfg.packed_crops)
        max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.objective.student.parameters(), max_norm)
        # The step's one read from the device: the loss, the norm and the signals in one transfer (on a GPU each
        # separate read waits for the work queued before it).
        names = list(logs)
        read = torch.stack([loss.float(), grad_norm.float(), *(logs[n].float() for n in names)]).tolist()
        loss_value, norm_value, logs = read[0], read[1], dict(zip(names, read[2:]))
        if not math.isfinite(loss_value):
            raise TrainingStopped(f"loss is {loss_value} at step {step}; stopped before the update "
                                  f"(last good checkpoint kept in {self.out / CHECKPOINT_DIR}). "
                                  f"Lower optim.base_lr or use precision fp32")
        if not math.isfinite(norm_value):
            raise TrainingStopped(f"gradient norm is {norm_value} at step {step}; stopped before the "
                                  f"update (last good checkpoint kept in {self.out / CHECKPOINT_DIR})")
        self.objective.before_optimizer_step(step, self.length)
        self.optimizer.step()
        self.objective.after_optimizer_step(values)
        return {"loss": loss_value, **values, "grad_norm": norm_value, **logs}

    def autocast(self) -> torch.autocast:
        """The step's autocast context: bf16 where `--precision` chose it, else a disabled one (plain fp32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    # ----------------------------------------------------------------------------------------- the loop
    def batch(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.length.steps_per_epoch)
        indices = self.sampler.batch_indices(epoch, position)
        if self.images_on_device is not None:
            return self.images_on_device[to_device(indices, self.device)]
        return to_device(self.dataset.training_batch(indices), self.device)

    def batches(self) -> Iterator[torch.Tensor]:
        """The run's batches from the current step on, on the device: from device memory, or decoded ahead of the
        step by worker processes (`data_workers`, data/loader.py)."""
        total = self.length.total_steps
        if self.images_on_device is not None:
            for step in range(self.step, total):
                yield self.batch(step)
            return
        steps = StepBatches(self.dataset, self.sampler, self.length.steps_per_epoch)
        for images in prefetched(steps, self.step, total, workers_for(self.cfg.data_workers, self.dataset)):
            yield to_device(images, self.device)

    def run(self) -> Path:
        cfg, total = self.cfg, self.length.total_steps
        images_per_step = cfg.batch_size * self.dist.world_size
        last_time, last_step, waited = time.perf_counter(), self.step, 0.0
        batches = self.batches()
        with tqdm(total=total, initial=self.step, disable=not (self.progress and self.dist.is_main),
                  desc=f"{cfg.method} on {cfg.data}", unit="step", dynamic_ncols=True) as bar, \
                StopSignals(enabled=self.dist.world_size == 1) as stop:
            while self.step < total:
                asked = time.perf_counter()
                images = next(batches)
                waited += time.perf_counter() - asked
                values = self.train_step(images, self.step)
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == total:
                    now = time.perf_counter()
                    img_per_s = images_per_step * (self.step - last_step) / max(now - last_time, 1e-9)
                    data_wait = waited / max(now - last_time, 1e-9)  # share of the interval spent waiting for data
                    last_time, last_step, waited = now, self.step, 0.0
                    row = {"step": self.step, "epoch": round(self.step / self.length.steps_per_epoch, 4), **values,
                           "img_per_s": round(img_per_s, 2), "data_wait": round(data_wait, 4)}
                    self._log_row(row)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                    img_s=f"{img_per_s:.1f}")
                bar.update(1)
                if cfg.export_every and self.step % cfg.export_every == 0:
                    self.export(export_path(self.out, self.step))
                signum = stop.requested  # read once: a signal may land between the save and the stop
                if (self.step % cfg.save_every == 0 or signum) and self.step < total:
                    self.save()
                if signum and self.step < total:
                    raise TrainingInterrupted(f"{signal.Signals(signum).name} at step {self.step} of "
                                              f"{total}: saved a checkpoint of it; resume with --resume",
                                              signum)
            self.save()  # the last checkpoint and the final model.safetensors
        return self.out

    def _log_row(self, row: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.log.append(row)
        collapsed = self.monitor.update(row)
        if collapsed:
            message = f"collapse at step {row['step']}: " + "; ".join(sorted(collapsed))
            if self.cfg.stop_on_collapse:
                raise TrainingStopped(message + " (stopped: --stop-on-collapse)")
            warnings.warn(message, stacklevel=2)

    # ----------------------------------------------------------------------------------------- state I/O
    def state(self) -> dict[str, Any]:
        return {"step": torch.tensor(self.step), "modules": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "bf16": torch.tensor(self.autocast_dtype == torch.bfloat16)}  # the precision it trained in

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.out / CHECKPOINT_DIR, self.step, self.state(), keep=self.cfg.keep_checkpoints)
            self.export()
        distributed.barrier()

    def export(self, path: Path | None = None) -> None:
        """The backbone as safetensors with its provenance, to `model.safetensors` in the run unless `path`."""
        if self.dist.is_main:
            path = path or self.out / EXPORT_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            export_backbone(self.objective.export_backbone(), self.cfg.model, path,
                            method=self.cfg.method, data=self.cfg.data, steps=self.step,
                            dtype=getattr(torch, self.cfg.export_dtype),
                            extra={"total_steps": self.length.total_steps,
                                   "epochs": self.step / self.length.steps_per_epoch})

    def _resume(self) -> None:
        found = latest_good(self.out / CHECKPOINT_DIR, map_location=self.device)
        if found is None:
            raise UserError(f"--resume: no usable checkpoint in {self.out / CHECKPOINT_DIR}; start a new run "
                            f"without --resume")
        _, state = found
        try:
            self.objective.load_state_dict(state["modules"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"--resume: checkpoint in {self.out} does not fit this config "
                            f"({str(exc).splitlines()[0][:120]}); resume with the run's own config.yaml") from None
        self.step = int(state["step"])
        if self.dist.is_main:
            self.log.truncate_after(self.step)
            self._warn_on_precision_change(state.get("bf16"))

    def _warn_on_precision_change(self, trained_bf16: torch.Tensor | None) -> None:
        """A resume on another CPU kind (or whose `auto` timing chose otherwise) computes in another precision:
        say so in one line, with the flag that keeps the old one. Checkpoints from before the record: silent."""
        if trained_bf16 is None:
            return
        was = precision.precision_name(torch.bfloat16 if bool(trained_bf16) else None)
        now = precision.precision_name(self.autocast_dtype)
        if was == now:
            return
        warnings.warn(f"--resume: {self.out} trained in {was} up to step {self.step} and goes on in {now} "
                      f"(--precision {self.cfg.precision} on this machine); pass --precision {was} to keep {was}",
                      stacklevel=2)

    def _check_out_dir(self, resume: bool) -> None:
        """Refuse to touch an existing run unless resuming; nothing is created until the inputs proved good."""
        out = self.out
        if resume:
            if not list_checkpoints(out / CHECKPOINT_DIR):
                raise UserError(f"--resume: {out} has no checkpoints; start a new run without --resume")
            return
        if out.exists() and any(out.iterdir()):
            raise UserError(f"run directory {out} already exists and is not empty; pass --resume to continue "
                            f"it or choose another --out")


def train(cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True) -> Path:
    """Train one run to the end and return its folder (with model.safetensors)."""
    trainer = Trainer(cfg, out, resume=resume, progress=progress)
    try:
        return trainer.run()
    finally:
        distributed.teardown()

