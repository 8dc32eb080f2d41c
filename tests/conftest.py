"""Shared fixtures: tiny trained runs made once per test session with the smoke preset, and launching an app."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dinotwins.config import build_config, load_preset, merge
from dinotwins.objectives import METHODS
from dinotwins.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def smoke_config(method: str, **overrides):
    data = merge(load_preset("smoke"), {"method": method, "data": "synthetic:64", "device": "cpu", **overrides})
    return build_config(data)


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    """{method: run dir} of three tiny runs (4 steps each) on synthetic data, with exported weights."""
    root = tmp_path_factory.mktemp("smoke_runs")
    return {m: train(smoke_config(m), root / m, progress=False) for m in METHODS}


@pytest.fixture(scope="module", autouse=True)
def restore_pil_limit():
    """build_app lowers Pillow's process-wide pixel limit; give other test modules the default back."""
    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `args` (a script, or -m module) as two CPU processes under torchrun from the repository root."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@contextlib.contextmanager
def launched(demo):
    """Serve a built gradio app on a free 127.0.0.1 port without blocking; yields (url, launch options)."""
    from app.ui import launch_options  # gradio only for the tests that launch an app

    options = launch_options(port=free_port())
    demo.launch(**options, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{options['server_port']}/", options
    finally:
        demo.close()
