"""pyproject.toml: the console scripts name real entry points, the dependencies are requirements.txt's without
the test tools (so `pip install .` gives the same environment as `make setup`, minus pytest), and its package data
holds every shipped model file and preset (a plain `pip install .` has only what these globs match)."""

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TEST_TOOLS = {"pytest", "playwright"}


def test_every_console_script_is_a_main_function():
    assert set(PROJECT["scripts"]) == {"dinotwins-train", "dinotwins-evaluate", "dinotwins-bench", "dinotwins-explorer"}
    for target in PROJECT["scripts"].values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def test_dependencies_are_the_requirements_without_the_test_tools():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    runtime = [r for r in requirements if not any(r.startswith(tool) for tool in TEST_TOOLS)]
    assert PROJECT["dependencies"] == runtime


def test_package_data_holds_every_demo_model_file_and_preset():
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]
    packaged = {path for package, patterns in globs.items() for pattern in patterns
                for path in (ROOT / package.replace(".", "/")).glob(pattern) if path.is_file()}
    shipped = {path for path in (ROOT / "assets").rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    shipped |= set((ROOT / "dinotwins" / "presets").glob("*.yaml"))
    assert any(p.name == "model.safetensors" for p in shipped)
    assert shipped - packaged == set()
