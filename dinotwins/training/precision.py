"""Which autocast dtype a device gets: bf16 where it computes bf16 fast, else plain fp32. Shared by training,
feature extraction and the benchmark."""

from __future__ import annotations

import torch

from dinotwins.cpu import cpu_has_native_bf16, torch_threads
from dinotwins.timing import best_seconds
from dinotwins.training.distributed import same_on_every_rank

# bf16 is chosen on a CPU when its matmul runs at least this much faster than fp32 (AMX: 1.4x and more; AVX512-BF16
# without AMX: ~2x; a CPU whose libraries are capped below AVX512-BF16: ~0.03x).
BF16_MIN_SPEEDUP = 1.2


def pick_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or None for plain fp32. 'auto': bf16 on CUDA GPUs that support it; on a CPU, bf16 where
    its flags promise native bf16 (AVX512-BF16/AMX) and a one-off timing of a matmul confirms it is faster than fp32
    in the libraries as loaded (an ISA cap such as ONEDNN_MAX_CPU_ISA=AVX2 makes bf16 an emulation, ~30x slower)."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_bf16_is_fast() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """The `--precision` value that gives autocast dtype `dtype` (None: plain fp32): "bf16" or "fp32"."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


_bf16_fast: bool | None = None  # this process's answer, once timed (or agreed with rank 0)


def cpu_bf16_is_fast() -> bool:
    """True when this CPU has native bf16 flags and a 256-cube bf16 matmul beats fp32 by `BF16_MIN_SPEEDUP`
    (measured once per process, a few ms where bf16 is native)."""
    global _bf16_fast
    if _bf16_fast is None:
        _bf16_fast = (torch.backends.mkldnn.is_available() and cpu_has_native_bf16()
                      and bf16_matmul_speedup() >= BF16_MIN_SPEEDUP)
    return _bf16_fast


def bf16_matmul_speedup(n: int = 256, rounds: int = 5, repeats: int = 4) -> float:
    """fp32 seconds over bf16 seconds of `repeats` n-cube matmuls, each dtype's best of `rounds` interleaved timings
    after one untimed round, so a load that comes or goes, or a slow first bf16 product, does not decide alone
    (README, Performance). Timed on one thread: on a busy machine a multi-threaded fp32 product can stall at its
    thread barriers for longer than an emulated bf16 one takes."""
    operands = {dtype: (torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype))
                for dtype in (torch.float32, torch.bfloat16)}

    def products(dtype: torch.dtype):
        a, b = operands[dtype]
        return lambda: [a @ b for _ in range(repeats)]

    with torch_threads(1):
        best = best_seconds({dtype: products(dtype) for dtype in operands}, rounds, warmup=1)
    return best[torch.float32] / best[torch.bfloat16]


def agree_across_ranks() -> None:
    """Under torchrun, every rank takes rank 0's `cpu_bf16_is_fast` (timings can differ between processes); call it
    in every rank at the same point. Without a process group it only times."""
    global _bf16_fast
    _bf16_fast = same_on_every_rank(cpu_bf16_is_fast())


def forget_timing() -> None:
    """Time again at the next `cpu_bf16_is_fast` (tests)."""
    global _bf16_fast
    _bf16_fast = None


def matmul_seconds(dtype: torch.dtype, n: int = 256, repeats: int = 4, trials: int = 3,
                   device: torch.device = torch.device("cpu"), warmup: int = 1) -> float:
    """Best-of-`trials` seconds of `repeats` n x n x n matmuls in `dtype` on `device` (its queued work waited for),
    after `warmup` untimed ones, on the current threads. The benchmark's roofline is this timing at n = 2048."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(warmup):
        a @ b

    def products() -> None:
        for _ in range(repeats):
            a @ b

    return best_seconds({dtype: products}, trials, device=device)[dtype]
