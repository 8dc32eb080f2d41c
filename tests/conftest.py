"""Shared fixtures: tiny trained runs made once per test session with the smoke preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinotwins.config import build_config, load_preset, merge
from dinotwins.trainer import train

METHODS = ("dino", "barlow", "hybrid")


def smoke_config(method: str, **overrides):
    data = merge(load_preset("smoke"), {"method": method, "data": "synthetic:64", "device": "cpu", **overrides})
    return build_config(data)


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    """{method: run dir} of three tiny runs (4 steps each) on synthetic data, with exported weights."""
    root = tmp_path_factory.mktemp("smoke_runs")
    return {m: train(smoke_config(m), root / m, progress=False) for m in METHODS}
