"""The four service apps, built from their factories, and their OpenAPI documents as schemathesis schemas."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from tests.service_apps import build_app

# The coverage phase enumerates every boundary and example combination (hundreds of calls for one rollout
# operation), which the time budget cannot hold; explicit examples and fuzzing (positive and negative) stay, with a
# fixed seed so a failure reproduces.
CONFIG = SchemathesisConfig.from_dict({"seed": 20250611, "phases": {"coverage": {"enabled": False}}})


def openapi_schema(service: str):
    """The service's OpenAPI document as its app serves it: routes do not depend on the config, and no lifespan
    runs here, so the placeholder Redis URL is never dialled."""
    with tempfile.TemporaryDirectory() as home:
        app = build_app(service, Path(home), "redis://127.0.0.1:1")
        return schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)


@pytest.fixture
def contract_home(score_home, tmp_path):
    """A fresh SCORE_HOME per test (runs, jobs, checkpoints) sharing the session's built-in models."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "builtin").symlink_to(score_home / "models" / "builtin")
    return home


# Calls through `app=` start the app's lifespan (engine, sandboxes, Redis client, job manager) on first use;
# the schemathesis pytest plugin ends it when the test ends, while these fixtures are still alive.
@pytest.fixture
def coordinator_app(contract_home, redis_url):
    return build_app("coordinator", contract_home, redis_url)


@pytest.fixture
def student_app(contract_home):
    return build_app("student", contract_home)


@pytest.fixture
def teacher_app(contract_home):
    return build_app("teacher", contract_home)


@pytest.fixture
def trainer_app(contract_home):
    return build_app("trainer", contract_home)
