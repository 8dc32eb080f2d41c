"""DINOv2's ingredients beyond DINO (Oquab et al. 2023), as options of the DINO objective and the hybrid.

- **KoLeo** (`dino.koleo_weight`, 0 = off; DINOv2: 0.1): the Kozachenko-Leonenko entropy estimator as a loss,
  -mean_i log ||x_i - x_nn(i)|| over the L2-normalized CLS embeddings of the student's global crops, one batch per
  global view: it pushes each image away from its nearest neighbour, spreading the batch. Logged as `loss_koleo`.
- **Sinkhorn-Knopp centering** (`dino.centering: sinkhorn_knopp`, default `ema`): the teacher's targets are
  exp(logits / T) normalized alternately over prototypes and samples for 3 iterations (SwAV), so every prototype
  gets an equal share of the batch, instead of softmax((logits - center) / T) with DINO's EMA center.
- **iBOT** (`ibot.weight`, 0 = off, and `ibot.mask_ratio`): the student sees its global crops with a share of their
  patches replaced by a learned mask token and predicts, through its own iBOT head, the teacher's (unmasked)
  patch-token distributions at those patches: cross-entropy per masked patch, averaged per image then over images.
  The teacher's patch targets are centered like its CLS targets (their own EMA center, or Sinkhorn-Knopp).
  Masks here are random patches at exactly `mask_ratio` of every global crop (DINOv2 masks half of its images, in
  blocks, at ratios 0.1-0.5). Logged as `loss_ibot`.
- Packed crops (`packed_crops`) are the backbone's business: models/tokens.py.

Under torchrun, KoLeo's nearest neighbours and Sinkhorn-Knopp's sums run over the global batch (the other ranks'
embeddings gathered without gradient; each rank's loss reaches its own). Pure functions and the iBOT head; the
wiring is in dino.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dinotwins.errors import UserError
from dinotwins.objectives.heads import DINOHead
from dinotwins.transfer import to_device

SINKHORN_ITERATIONS = 3  # DINOv2's


@dataclass
class IBotConfig:
    """iBOT's masked-patch objective (config.yaml section `ibot`); read by DINO and the hybrid."""

    weight: float = 0.0  # 0: off; DINOv2 weighs it 1.0 beside the DINO loss
    mask_ratio: float = 0.3  # share of each global crop's patches the student sees masked
    out_dim: int = 2048  # prototypes of the iBOT head (its own head, as DINOv2's default)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256

    def validate(self) -> None:
        if self.weight < 0:
            raise UserError(f"ibot.weight must be >= 0 (0: off), got {self.weight}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise UserError(f"ibot.mask_ratio must be in (0, 1), got {self.mask_ratio}")


def koleo_loss(x: Tensor, distributed: bool = False, eps: float = 1e-8) -> Tensor:
    """-mean_i log(||x_i - x_nn(i)|| + eps) of the L2-normalized rows of x (B, D), nn(i) the nearest other row (of
    the global batch when `distributed`)."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    others, offset = x, 0
    if distributed and dist.is_available() and dist.is_initialized():
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.detach().contiguous())
        offset = dist.get_rank() * x.shape[0]
        gathered[dist.get_rank()] = x  # the rank's own rows keep their gradient
        others = torch.cat(gathered)
    with torch.no_grad():
        sims = x @ others.T  # (B, world B)
        sims[torch.arange(x.shape[0]), offset + torch.arange(x.shape[0])] = -float("inf")  # not itself
        nearest = sims.argmax(dim=1)
    distances = (x - others[nearest]).norm(dim=-1)
    return -torch.log(distances + eps).mean()


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temperature: float, iterations: int = SINKHORN_ITERATIONS,
                   distributed: bool = False) -> Tensor:
    """Targets (B, K) from teacher logits (B, K): Q = exp(logits / T), normalized to total 1, then `iterations`
    rounds of rows-per-prototype to 1/K and columns-per-sample to 1/B (B over the global batch when
    `distributed`); returned per sample (each row sums to 1)."""
    reduce = distributed and dist.is_available() and dist.is_initialized()
    shift = logits.float().max()  # for exp's range; it cancels in the first normalization, if every rank shares it
    if reduce:
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    q = torch.exp((logits.float() - shift) / temperature).T  # (K, B)
    batch = torch.full((), float(q.shape[1]), device=q.device)  # a fill, not a copy from the host
    total = q.sum()
    if reduce:
        dist.all_reduce(batch)
        dist.all_reduce(total)
    q /= total
    prototypes = q.shape[0]
    for _ in range(iterations):
        per_prototype = q.sum(dim=1, keepdim=True)
        if reduce:
            dist.all_reduce(per_prototype)
        q /= per_prototype * prototypes
        q /= q.sum(dim=0, keepdim=True) * batch
    return (q * batch).T


def ibot_loss(student_logits: Tensor, teacher_probs: Tensor, masks: Tensor, student_temp: float) -> Tensor:
    """iBOT's masked cross-entropy: student_logits and teacher_probs (M, K) at the M masked patches of `masks`
    (bool (V B, h, w), in its row-major order); each patch weighs 1 / (its image's masked count), summed per image
    and averaged over the V B images."""
    per_patch = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)  # (M,)
    counts = masks.flatten(1).sum(dim=1).clamp(min=1)  # (V B,)
    weights = (1.0 / counts)[:, None].expand_as(masks.flatten(1))[masks.flatten(1)]  # (M,)
    return (per_patch * weights).sum() / masks.shape[0]


def random_patch_masks(views: int, grid: tuple[int, int], ratio: float, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> Tensor:
    """bool (views, h, w): round(ratio * h * w) patches (at least one) masked at random in each view."""
    h, w = grid
    count = max(1, round(ratio * h * w))
    order = torch.rand(views, h * w, generator=generator).argsort(dim=1)
    masks = torch.zeros(views, h * w, dtype=torch.bool)
    masks.scatter_(1, order[:, :count], True)
    return to_device(masks.view(views, h, w), device)


class IBotHead(nn.Module):
    """The iBOT head: DINO's head shape (MLP, L2 norm, unit prototypes) on patch tokens, and the student's learned
    mask token (kept here, not in the backbone, so exported backbones stay plain ViTs)."""

    patch_level = True  # fed the patch tokens at the masked positions, not the CLS embedding
    global_only = True

    def __init__(self, in_dim: int, cfg: IBotConfig):
        super().__init__()
        self.head = DINOHead(in_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.mask_token = nn.Parameter(torch.zeros(in_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, patches: Tensor) -> Tensor:
        """(M, D) patch tokens -> (M, K) logits."""
        return self.head(patches)
