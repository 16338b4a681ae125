"""Fixtures for student service tests: the app built from its factory, served in-process."""

import pytest
from fastapi.testclient import TestClient

from shared.sandbox.limits import SandboxLimits
from shared.settings import Settings
from services.student.app import create_app
from services.student.config import StudentConfig


def student_config(score_home, **overrides) -> StudentConfig:
    values = dict(settings=Settings(home=score_home), device="cpu", sandbox=SandboxLimits(step_timeout_s=2.0))
    values.update(overrides)
    return StudentConfig(**values)


@pytest.fixture(scope="module")
def client(score_home):
    with TestClient(create_app(student_config(score_home))) as client:
        yield client
