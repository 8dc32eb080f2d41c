"""Which autocast dtype a device gets: bf16 where it computes bf16 fast, else plain fp32. Shared by training and
feature extraction."""

from __future__ import annotations

from pathlib import Path

import torch


def pick_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast dtype, or None for plain fp32. 'auto': bf16 on CUDA GPUs that support it and on CPUs
    with native bf16 matmuls (AVX512-BF16/AMX), where it is several times faster than fp32."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
