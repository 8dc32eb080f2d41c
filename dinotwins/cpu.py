"""What this CPU is, read from /proc/cpuinfo: its model, the instruction-set flags that decide the dtype (training
picks bf16 by them, the benchmark and eval.json report them), the instruction sets the loaded libraries were capped
to, and torch's thread count held for a stretch of work."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch


def cpu_isa_caps() -> dict[str, str]:
    """The instruction sets the loaded libraries use, where capped below the CPU's own: ATen's kernels
    (ATEN_CPU_CAPABILITY), oneDNN (ONEDNN_MAX_CPU_ISA) and MKL (MKL_ENABLE_INSTRUCTIONS). Capping all three to AVX2
    runs this code as on an AVX2-only CPU (README, Performance)."""
    caps = {"aten": torch.backends.cpu.get_cpu_capability()}
    for key, env in (("onednn_max", "ONEDNN_MAX_CPU_ISA"), ("mkl", "MKL_ENABLE_INSTRUCTIONS")):
        if os.environ.get(env):
            caps[key] = os.environ[env]
    return caps


CPUINFO = Path("/proc/cpuinfo")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 matmuls


def cpu_description(cpuinfo: Path = CPUINFO) -> dict[str, str | list[str] | dict[str, str]]:
    """The CPU's model name with its family and model numbers, the instruction-set flags that decide the dtype (from
    /proc/cpuinfo) and the instruction sets the libraries were capped to, if any (`cpu_isa`)."""
    try:
        info = cpuinfo.read_text()
    except OSError:
        return {"cpu": "unknown", "cpu_flags": [], "cpu_isa": cpu_isa_caps()}
    first = info.split("\n\n")[0].splitlines()  # the first processor's block
    field = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first)}
    name = field.get("model name", "?")
    if field.get("cpu family") and field.get("model"):  # a vendor's one name covers several generations
        name += f" (family {field['cpu family']} model {field['model']})"
    flags = set(field.get("flags", "").split())
    return {"cpu": name, "cpu_flags": [f for f in REPORTED_FLAGS if f in flags], "cpu_isa": cpu_isa_caps()}


def cpu_has_native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """True when the CPU's flags promise native bf16 matmuls (AVX512-BF16 or AMX); False where unreadable."""
    return any(flag in BF16_FLAGS for flag in cpu_description(cpuinfo)["cpu_flags"])


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[None]:
    """Run the block on `threads` torch threads (None: as many as now) and give torch its thread count back after,
    whatever the block (or a library it calls) set."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
