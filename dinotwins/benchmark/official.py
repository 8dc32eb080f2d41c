"""The official DINO training step, timed interleaved with ours: `python -m dinotwins.bench --official PATH`.

PATH is a clone of facebookresearch/dino (nothing of it is copied here: its modules are imported from PATH). The
step is `main_dino.train_one_epoch`'s loop body for one batch, on the CPU: the teacher on the 2 global crops and the
student on all crops (its `MultiCropWrapper`, one backbone call per resolution), its `DINOLoss` (with its center
update, which needs a process group: a one-process gloo group is started, or under torchrun the group's, with the
student in DDP as main_dino has it), backward, its `clip_gradients`, `cancel_gradients_last_layer`, torch's AdamW
on its `get_params_groups`, and its EMA loop over the parameters. The backbone is its `VisionTransformer` at the
benchmark's shape (depth, width, heads, patch, image size), with its `DINOHead` at K prototypes; the crops are made
once by our multi-crop (the official augmentation runs in data loader workers, outside the step). Precision: on a
CPU fp32, the official code's path there (its fp16 autocast is CUDA's), or with `bf16` the same step under torch's
CPU bf16 autocast; on a GPU its default, fp16 autocast with its loss scaler (`--use_fp16 true`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from dinotwins.config import TrainConfig
from dinotwins.errors import UserError
from dinotwins.training.distributed import resolve_device
from dinotwins.training.precision import pick_precision


def official_step(repo: Path, cfg: TrainConfig, bf16: bool = False,
                  device: torch.device | None = None) -> Callable[[], None]:
    """One call = one official training step at `cfg`'s shape (a TrainConfig), built from the clone at `repo`, on
    `device` (default the CPU)."""
    repo = Path(repo).expanduser().resolve()
    if not (repo / "main_dino.py").is_file() or not (repo / "vision_transformer.py").is_file():
        raise UserError(f"{repo} is not a clone of facebookresearch/dino (no main_dino.py); git clone it and pass its "
                        f"folder to --official")
    sys.path.insert(0, str(repo))
    import main_dino  # noqa: E402 - the official code, from the clone
    import utils
    import vision_transformer as vits

    import torch.distributed as dist

    device = device or torch.device("cpu")
    cuda = device.type == "cuda"
    if not dist.is_initialized():  # its DINOLoss all-reduces the center (gloo reduces CUDA tensors too)
        store = Path(tempfile.mkdtemp()) / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    model, dino, aug = cfg.model, cfg.objectives["dino"], cfg.augment

    def network(drop_path: float) -> nn.Module:
        backbone = vits.VisionTransformer(img_size=[model.image_size], patch_size=model.patch_size,
                                          embed_dim=model.embed_dim or 192, depth=model.depth or 12,
                                          num_heads=model.num_heads or 3, mlp_ratio=4, qkv_bias=True,
                                          norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=drop_path)
        head = vits.DINOHead(backbone.embed_dim, dino.out_dim, use_bn=False, norm_last_layer=True,
                             hidden_dim=dino.hidden_dim, bottleneck_dim=dino.bottleneck_dim)
        return utils.MultiCropWrapper(backbone, head)

    torch.manual_seed(0)
    student, teacher = network(model.drop_path_rate).to(device), network(0.0).to(device)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    student_params = list(student.parameters())  # the EMA's source, as main_dino's `student.module`
    if dist.get_world_size() > 1:  # under torchrun: main_dino's DDP student
        student = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if cuda else None)
    ncrops = 2 + aug.n_local
    dino_loss = main_dino.DINOLoss(dino.out_dim, ncrops, dino.warmup_teacher_temp, dino.teacher_temp, 1, 2).to(device)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    scaler = torch.amp.GradScaler("cuda") if cuda else None  # main_dino's fp16_scaler
    from dinotwins.data.augment import MultiCrop

    images = torch.randint(0, 256, (cfg.batch_size, 3, model.image_size, model.image_size), dtype=torch.uint8)
    global_views, local_views = MultiCrop(aug)(images.to(device), torch.Generator().manual_seed(0))
    crops = global_views + local_views

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16 if cuda else torch.bfloat16, enabled=cuda or bf16):
            teacher_output = teacher(crops[:2])
            student_output = student(crops)
            if not cuda:  # as the CPU measurements always ran; main_dino passes the autocast outputs as they are
                student_output, teacher_output = student_output.float(), teacher_output.float()
            loss = dino_loss(student_output, teacher_output, 0)
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            utils.clip_gradients(student, cfg.optim.clip_grad)
            utils.cancel_gradients_last_layer(1, student, 0)
            optimizer.step()
        else:  # main_dino's fp16 path
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            utils.clip_gradients(student, cfg.optim.clip_grad)
            utils.cancel_gradients_last_layer(1, student, 0)
            scaler.step(optimizer)
            scaler.update()
        with torch.no_grad():
            m = 0.996
            for param_q, param_k in zip(student_params, teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        if not math.isfinite(loss.item()):
            raise RuntimeError("the official step's loss is not finite")

    return step


def official_commit(repo: Path) -> str:
    """The clone's checked-out commit (12 hex digits), or 'unknown'."""
    git = Path(repo).expanduser().resolve() / ".git"
    try:
        ref = (git / "HEAD").read_text().strip()
        if ref.startswith("ref: "):
            return (git / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return "unknown"


def match_official(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, str]]:
    """`cfg` without the ingredients the official DINO step lacks (iBOT, KoLeo), so both sides compute the same
    objective; the facts name what was turned off."""
    dino, ibot = cfg.objectives["dino"], cfg.objectives["ibot"]
    off = [name for name, on in (("ibot.weight=0", ibot.weight > 0), ("dino.koleo_weight=0", dino.koleo_weight > 0))
           if on]
    if not off:
        return cfg, {}
    objectives = {**cfg.objectives, "dino": dataclasses.replace(dino, koleo_weight=0.0),
                  "ibot": dataclasses.replace(ibot, weight=0.0)}
    return dataclasses.replace(cfg, objectives=objectives), {"matched_to_official": ", ".join(off)}


def official_rivals(repo: Path, cfg: TrainConfig) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    """The official step at this shape in its own precision on this device (fp32 on a CPU), and, where ours runs in
    bf16, under bf16 autocast too: ({'official': step, 'official_bf16': step}, facts for the result)."""
    device = resolve_device(cfg.device)
    rivals = {"official": official_step(repo, cfg, device=device)}
    if device.type == "cpu" and pick_precision(cfg.precision, device) == torch.bfloat16:
        rivals["official_bf16"] = official_step(repo, cfg, bf16=True)
    dtype = ("float16 autocast with loss scaling" if device.type == "cuda" else
             "float32 (and bfloat16 autocast)" if "official_bf16" in rivals else "float32")
    return rivals, {"official_commit": official_commit(repo), "official_dtype": dtype,
                    "timing": "interleaved, one step of each per round"}
