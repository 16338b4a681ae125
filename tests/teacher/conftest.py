"""Fixtures for teacher service tests: apps built from their factory, broken expert trajectories."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from shared.sandbox.limits import SandboxLimits
from shared.settings import Settings
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import broken_trajectory
from services.teacher.app import create_app
from services.teacher.config import TeacherConfig


def teacher_config(score_home, **overrides) -> TeacherConfig:
    values = dict(engine="expert", settings=Settings(home=score_home), sandbox=SandboxLimits(step_timeout_s=5.0))
    values.update(overrides)
    if values["engine"] != "expert":  # the scripted solver runs no model, so it takes no device
        values.setdefault("device", "cpu")
    return TeacherConfig(**values)


def broken_items(n: int, *, seed: int, restyle: bool = False) -> tuple[list[dict], list[int]]:
    """`n` built-in tasks (both families) with one act step broken each: request items and broken positions."""
    rng = random.Random(seed)
    items, positions = [], []
    for task in builtin_tasks(n=n, seed=seed):
        steps, position, _ = broken_trajectory(task, rng, restyle=restyle)
        items.append({"task": task.model_dump(mode="json"), "steps": [s.model_dump(mode="json") for s in steps]})
        positions.append(position)
    return items, positions


@pytest.fixture(scope="module")
def expert_client(score_home):
    with TestClient(create_app(teacher_config(score_home))) as client:
        yield client
