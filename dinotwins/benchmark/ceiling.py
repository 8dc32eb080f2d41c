"""The step's matrix products timed alone, at their own shapes, strides and dtypes: how fast the step could be if
everything else in it (casts, GELU, LayerNorm, softmax, the optimizer) were free. `python -m dinotwins.bench`
reports it as `matmul_ceiling`: whether the model's shapes or the rest of the step keep it from the limit."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dinotwins.timing import synchronize

_aten = torch.ops.aten
# operator -> positions of its two matrix operands (addmm's and baddbmm's added input is elementwise: the rest)
_MATMULS = {_aten.mm.default: (0, 1), _aten.addmm.default: (1, 2), _aten.bmm.default: (0, 1),
            _aten.baddbmm.default: (1, 2)}


class Product(NamedTuple):
    """One matrix product as the step ran it."""

    a_shape: tuple[int, ...]
    a_stride: tuple[int, ...]
    b_shape: tuple[int, ...]
    b_stride: tuple[int, ...]
    dtype: torch.dtype

    @property
    def flops(self) -> int:
        *batch, m, k = self.a_shape
        return 2 * m * k * self.b_shape[-1] * (batch[0] if batch else 1)

    def transposed(self) -> Product:
        """The same result computed the other way round, C^T = B^T A^T (each operand a transposed view): a BLAS
        may run one orientation of a shape faster than the other."""
        def t(seq: tuple[int, ...]) -> tuple[int, ...]:
            return (*seq[:-2], seq[-1], seq[-2])
        return Product(t(self.b_shape), t(self.b_stride), t(self.a_shape), t(self.a_stride), self.dtype)


class RecordProducts(TorchDispatchMode):
    """Counts every mm/addmm/bmm/baddbmm dispatched while active (forward and backward) by shape, stride and dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[Product] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _MATMULS:
            i, j = _MATMULS[func]
            a, b = args[i], args[j]
            self.counts[Product(tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), a.dtype)] += 1
        return func(*args, **(kwargs or {}))


def _operand(shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """A tensor of this shape and stride (transposed and broadcast views included) over random storage."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride))
    return torch.randn(size, device=device).to(dtype).as_strided(shape, stride)


def product_seconds(product: Product, device: torch.device, min_seconds: float = 0.01) -> float:
    """Seconds per call of this product alone, after a warm-up, repeated until `min_seconds` have passed."""
    a = _operand(product.a_shape, product.a_stride, product.dtype, device)
    b = _operand(product.b_shape, product.b_stride, product.dtype, device)
    run = torch.mm if len(product.a_shape) == 2 else torch.bmm
    run(a, b)
    calls = 1
    while True:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            run(a, b)
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls
        calls *= 2


def matmul_ceiling(counts: Counter[Product], device: torch.device, step_seconds: float,
                   peak_tflops: Callable[[], float], rounds: int = 3) -> dict[str, float | int]:
    """The recorded products' FLOPs over their summed solo time, as a fraction of `peak_tflops()` (measured in each
    round beside them, so a drifting machine moves both alike; the median of the rounds), and their solo time as a
    share of the step's `step_seconds`."""
    flops = sum(p.flops * n for p, n in counts.items())
    fractions, seconds = [], []
    for _ in range(rounds):
        solo = sum(product_seconds(p, device) * n for p, n in counts.items())
        seconds.append(solo)
        fractions.append(flops / solo / 1e12 / peak_tflops())
    solo = statistics.median(seconds)
    return {"matmul_products": sum(counts.values()), "matmul_shapes": len(counts),
            "matmul_gflop_per_step": flops / 1e9, "matmul_solo_s": solo, "matmul_share_of_step": solo / step_seconds,
            "matmul_ceiling": statistics.median(fractions)}


def slowest_products(counts: Counter[Product], device: torch.device, peak_tflops: float,
                     rows: int) -> list[str]:
    """The `rows` products with the most solo time per step, one line each: their share of all products' solo
    time, their own speed as a fraction of `peak_tflops` as they ran and computed transposed (`Product.transposed`),
    calls per step, and both operands' shapes and strides (a transposed operand shows as a stride that is not
    decreasing)."""
    timed = [(product_seconds(p, device) * n, p, n) for p, n in counts.items()]
    total = sum(seconds for seconds, _, _ in timed)
    lines = [f"{'share':>6} {'of peak':>7} {'transp.':>7} {'calls':>5}  A shape (stride) x B shape (stride)"]
    for seconds, p, n in sorted(timed, key=lambda row: row[0], reverse=True)[:rows]:
        # both orientations timed alternately, the best of five each: one timing of a product moves by a tenth
        pairs = [(product_seconds(p, device), product_seconds(p.transposed(), device)) for _ in range(5)]
        speed, other = (p.flops / min(times) / 1e12 / peak_tflops for times in zip(*pairs))
        lines.append(f"{seconds / total:6.1%} {speed:7.1%} {other:7.1%} {n:5d}  {p.a_shape} ({p.a_stride}) x "
                     f"{p.b_shape} ({p.b_stride}) {str(p.dtype).removeprefix('torch.')}")
    return lines
