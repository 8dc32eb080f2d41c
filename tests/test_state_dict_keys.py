"""Checkpoints of earlier runs keep resuming: every method's state-dict keys and shapes, and the order of the
parameters in the optimizer's groups (its state is saved by position), are held against a snapshot taken from the
code that wrote the first checkpoints (smoke preset). A change here breaks `--resume` of every existing run."""

import json
from pathlib import Path

import pytest

from dinotwins.objectives import build_objective
from dinotwins.training.trainer import param_groups
from tests.conftest import smoke_config

SNAPSHOT = json.loads((Path(__file__).parent / "snapshots" / "state_dict_keys.json").read_text())


def build(method: str):
    return build_objective(smoke_config(method))


@pytest.mark.parametrize("method", list(SNAPSHOT))
def test_state_dict_keys_and_shapes_are_the_snapshot(method):
    state = build(method).state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == list(SNAPSHOT[method]["state_dict"].items())


@pytest.mark.parametrize("method", list(SNAPSHOT))
def test_optimizer_parameter_order_is_the_snapshot(method):
    student = build(method).student
    names = {id(p): name for name, p in student.named_parameters()}
    groups = [[names[id(p)] for p in group["params"]] for group in param_groups(student)]
    assert groups == SNAPSHOT[method]["optimizer_groups"]
