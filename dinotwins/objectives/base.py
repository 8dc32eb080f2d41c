"""What every objective is to the trainer (`Objective`), and the student each one trains (`Student`).

An objective is an `nn.Module` holding `student` (the backbone plus the objective's heads), an optional `teacher`,
and whatever state its method keeps (DINO's center). Its state-dict keys are those attributes' (`student.backbone.*`,
`student.dino_head.*`, `student.projector.*`, `teacher.*`, `center.*`): checkpoints depend on them. The student is a
module of its own so the trainer can wrap it in DDP or torch.compile.

The trainer drives it through these calls and never asks which method it runs:
- `step_values(step, length)`: the method's schedules at this step (DINO: teacher momentum and temperature),
  logged and handed back to the calls below;
- `compute_gradients(...)`: forward and backward of the loss, returning it with the signals to log (0-d tensors,
  left on the device: the trainer reads them with the loss in one transfer, so a GPU is waited for once a step);
- `before_optimizer_step(step, length)` (DINO: the last layer's first-epoch freeze) and
  `after_optimizer_step(values)` (DINO: the EMA teacher update);
- `collapse_bands(cfg)`: the method's collapse zones of logged columns (a classmethod: the explorer reads them from a
  run's config); `export_backbone()`: the weights users get.

`compute_gradients` is shared. Each crop resolution goes through the backbone in one call (all global crops batched,
all local crops batched), as DINO's MultiCropWrapper does, and by default each resolution's part of the loss is
backpropagated as soon as it is computed. A subclass supplies the maths in four hooks: `targets` (what the student
is matched against this step, e.g. the teacher's outputs), `loss_parts` (its loss terms on one resolution's
outputs), `combine` (the loss from its terms; linear in the terms, so the parts of a split add up to the loss of the
whole) and `finish_step` (signals to log, and state updated from the step, e.g. DINO's center).

What it is not: no method's maths (dino.py, barlow.py, hybrid.py, losses.py), no optimizer, lr schedule, data or
I/O (training/).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinotwins.models.backbone import embed
from dinotwins.models.tokens import embed_tokens, packed_forward, run_blocks
from dinotwins.objectives.collapse_bands import CollapseBand
from dinotwins.schedules import RunLength


class Student(nn.Module):
    """Backbone plus heads, registered under the names the objective gives them (their state-dict prefixes).

    A head is a module with `global_only` (True: it sees the global crops only, as Barlow Twins' projector) and
    either `forward_views(feats (n_views B, D), n_views) -> (n_views B, ...)` on the CLS embeddings, or, with
    `patch_level = True` (iBOT's), `forward(patches (M, D)) -> (M, K)` on the patch tokens at the positions
    `select` marks, the head holding the `mask_token` that `masks` puts in the input."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]):
        super().__init__()
        self.backbone = backbone
        for name, head in heads.items():
            self.add_module(name, head)
        self.head_names = tuple(heads)

    def forward(self, views: list[Tensor], is_global: bool = True, masks: Tensor | None = None,
                select: Tensor | None = None, packed_locals: list[Tensor] | None = None) -> dict[str, Any]:
        """`views`: crops of one size, batched into one backbone call -> {"feats": CLS embeddings, head name: its
        output}. `masks` (bool (n_views B, h, w)): patches replaced by the mask token; `select`: the patches a
        patch-level head reads. With `packed_locals`, the local crops go through the same pass as `views` (the
        global crops), packed (models/tokens.py), and the result is {"global": ..., "local": ...}."""
        x = torch.cat(views)
        if packed_locals is not None:
            groups = [x] + ([torch.cat(packed_locals)] if packed_locals else [])
            tokens = packed_forward(self.backbone, groups, views[0].shape[0], [masks] + [None] * (len(groups) - 1),
                                    self._mask_token())
            out = {"global": self._heads(tokens[0], len(views), True, select)}
            if packed_locals:
                out["local"] = self._heads(tokens[1], len(packed_locals), False, None)
            return out
        if masks is None and select is None:
            feats = embed(self.backbone, x)  # (n_views B, D)
            return self._heads_on(feats, None, len(views), is_global, None)
        tokens = run_blocks(self.backbone, embed_tokens(self.backbone, x, masks, self._mask_token()))
        return self._heads(tokens, len(views), is_global, select)

    def _heads(self, tokens: Tensor, n_views: int, is_global: bool, select: Tensor | None) -> dict[str, Tensor]:
        prefix = self.backbone.num_prefix_tokens
        return self._heads_on(tokens[:, 0], tokens[:, prefix:], n_views, is_global, select)

    def _heads_on(self, feats: Tensor, patches: Tensor | None, n_views: int, is_global: bool,
                  select: Tensor | None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"feats": feats}
        for name in self.head_names:
            head = getattr(self, name)
            if not is_global and head.global_only:
                continue
            if getattr(head, "patch_level", False):
                if select is not None and patches is not None:
                    out[name] = head(patches[select.flatten(1)])  # (M, K) at the selected patches
            else:
                out[name] = head.forward_views(feats, n_views)
        return out

    def _mask_token(self) -> Tensor | None:
        return next((getattr(self, n).mask_token for n in self.head_names
                     if getattr(getattr(self, n), "patch_level", False)), None)


class Objective(nn.Module):
    """Base class of the registered objectives (see the module docstring)."""

    config_class: type  # the dataclass of the method's config.yaml section, named like the method
    uses_local_crops = True  # whether the student sees the local crops

    def __init__(self) -> None:
        super().__init__()
        self.student: Student
        self.teacher: Student | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Objective:
        """The objective a `TrainConfig` describes (its model and the config sections the method reads)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- per step
    def step_values(self, step: int, length: RunLength) -> dict[str, float]:
        return {}

    def before_optimizer_step(self, step: int, length: RunLength) -> None:
        """Called after clipping, before the update: the place to drop or change gradients."""

    def after_optimizer_step(self, values: Mapping[str, float]) -> None:
        """Called after the update: the place to move a teacher."""

    @classmethod
    def collapse_bands(cls, cfg: Any) -> list[CollapseBand]:
        """The method's collapse zones of logged columns, for a run's config (the trainer adds the embedding
        spread's, `collapse_bands.embedding_band`)."""
        return []

    def export_backbone(self) -> nn.Module:
        """The backbone users get: the teacher's when there is one (DINO evaluates the teacher), else the student's."""
        return (self.teacher or self.student).backbone

    # ------------------------------------------------------------------------------------------- the loss
    def patch_masks(self, global_views: list[Tensor]) -> Tensor | None:
        """bool (n_global B, h, w): the global crops' patches the student sees masked this step (iBOT), or None."""
        return None

    def targets(self, global_views: list[Tensor], n_local: int, values: Mapping[str, float], teacher: nn.Module,
                autocast: Callable[[], AbstractContextManager], masks: Tensor | None = None) -> Any:
        """What the student is matched against this step (no gradient); None when it is matched against itself.
        `masks`: this step's `patch_masks`, the positions a patch-level target is read at."""
        return None

    def loss_parts(self, out: dict[str, Tensor], n_views: int, first_view: int, is_global: bool, targets: Any,
                   distributed: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(loss terms, signals) of one resolution's student outputs; its views are `first_view` onwards."""
        raise NotImplementedError

    def combine(self, parts: dict[str, Tensor]) -> Tensor:
        """The loss from its terms (over all views, or over one resolution's share of them)."""
        raise NotImplementedError

    def finish_step(self, sums: dict[str, Tensor], targets: Any) -> dict[str, Tensor]:
        """After the backward: signals from the whole step's terms, and state updated from its forward."""
        return {}

    def compute_gradients(self, student: nn.Module, global_views: list[Tensor], local_views: list[Tensor],
                          values: Mapping[str, float], *, distributed: bool = False, teacher: nn.Module | None = None,
                          autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
                          no_sync: Callable[[], AbstractContextManager] | None = None,
                          per_resolution: bool = True, packed: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward and backward of the loss: leaves the gradients in the student's `.grad` (accumulated, so zero
        them first) and returns the loss (detached) with the logged signals.

        The loss is a sum of two parts: the global crops' and the local crops'. The targets carry no gradient, so
        with `per_resolution` each part is backpropagated right after its forward: the gradients are those of one
        backward of the sum, but only one resolution's activations are alive at a time. The global crops go
        first, so the local crops' smaller tensors reuse the memory they freed. `per_resolution=False` does one
        backward of the sum (the reference the tests compare with).

        `student` is `self.student` or its DDP/compiled wrapper; `teacher` defaults to `self.teacher` (pass its
        compiled wrapper to use that). `values` are this step's `step_values`. `autocast` opens the precision
        context for each forward (backward runs outside it). `no_sync` is DDP's `no_sync`: every forward but the
        last runs under it, so gradients are all-reduced once, in the backward after the last forward, which must
        reach every parameter; under DDP the local crops go first and the global crops, which reach every head, last.
        With `packed` every crop goes through one forward pass (`Student.forward` with `packed_locals`) and one
        backward: the same loss and gradients, with all activations alive at once.
        """
        masks = self.patch_masks(global_views)
        targets = self.targets(global_views, len(local_views), values,
                               teacher if teacher is not None else self.teacher, autocast, masks)
        locals_seen = local_views if self.uses_local_crops else []
        if packed:
            return self._packed_gradients(student, global_views, locals_seen, masks, targets, distributed, autocast)
        groups = [(global_views, 0, True)]  # (views, index of their first view, is_global)
        if locals_seen:
            groups.insert(0 if no_sync is not None else 1, (locals_seen, len(global_views), False))
        logs: dict[str, Tensor] = {}
        sums: dict[str, Tensor] = {}  # each loss term summed over the groups
        for index, (views, first_view, is_global) in enumerate(groups):
            last = index == len(groups) - 1  # under DDP, the synchronized backward
            with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
                with autocast():
                    out = student(views, is_global=is_global, **({"masks": masks, "select": masks}
                                                                 if is_global and masks is not None else {}))
                    part, signals = self.loss_parts(out, len(views), first_view, is_global, targets, distributed)
                    logs.update(signals)
                    if is_global:
                        logs["embed_std"] = normalized_std(out["feats"].detach())
                if per_resolution:
                    self.combine(part).backward()
                    part = {name: value.detach() for name, value in part.items()}
            for name, value in part.items():
                sums[name] = sums[name] + value if name in sums else value
        total = self.combine(sums)
        if not per_resolution:
            total.backward()
        logs.update(self.finish_step(sums, targets))
        return total.detach(), logs

    def _packed_gradients(self, student: nn.Module, global_views: list[Tensor], local_views: list[Tensor],
                          masks: Tensor | None, targets: Any, distributed: bool,
                          autocast: Callable[[], AbstractContextManager]) -> tuple[Tensor, dict[str, Tensor]]:
        """`compute_gradients` with every crop in one packed forward pass, then one backward."""
        logs: dict[str, Tensor] = {}
        sums: dict[str, Tensor] = {}
        with autocast():
            outs = student(global_views, masks=masks, select=masks, packed_locals=local_views)
            groups = [(outs["global"], len(global_views), 0, True)]
            if local_views:
                groups.append((outs["local"], len(local_views), len(global_views), False))
            for out, n_views, first_view, is_global in groups:
                part, signals = self.loss_parts(out, n_views, first_view, is_global, targets, distributed)
                logs.update(signals)
                for name, value in part.items():
                    sums[name] = sums[name] + value if name in sums else value
            logs["embed_std"] = normalized_std(outs["global"]["feats"].detach())
        total = self.combine(sums)
        total.backward()
        logs.update(self.finish_step({name: value.detach() for name, value in sums.items()}, targets))
        return total.detach(), logs


def normalized_std(feats: Tensor) -> Tensor:
    """Mean per-dimension std of L2-normalized embeddings: about 1/sqrt(D) when healthy, 0 when collapsed (a 0-d
    tensor: the step reads its signals from the device once, at its end)."""
    return F.normalize(feats.float(), dim=-1).std(dim=0).mean()
