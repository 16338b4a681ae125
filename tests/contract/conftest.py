"""The four service apps, built from their factories, and their OpenAPI documents as schemathesis schemas."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig

from shared.settings import Settings
from shared.tools.sandbox import SandboxLimits


def _coordinator(home, redis_url):
    from services.coordinator.app import create_app
    from services.coordinator.config import CoordinatorConfig

    # No stage workers: created runs stay queued and nothing calls the model services.
    return create_app(Settings(home=home, redis_url=redis_url), CoordinatorConfig(workers=0))


def _student(home, redis_url=None):
    from services.student.app import create_app
    from services.student.config import StudentConfig

    return create_app(StudentConfig(settings=Settings(home=home), device="cpu",
                                    sandbox=SandboxLimits(step_timeout_s=2.0)))


def _teacher(home, redis_url=None):
    from services.teacher.app import create_app
    from services.teacher.config import TeacherConfig

    return create_app(TeacherConfig(engine="expert", settings=Settings(home=home), device="cpu",
                                    sandbox=SandboxLimits(step_timeout_s=2.0)))


def _trainer(home, redis_url=None):
    from services.trainer.app import create_app
    from services.trainer.config import TrainerConfig

    # Jobs stay queued: no training process starts whatever the generated body says.
    return create_app(TrainerConfig(settings=Settings(home=home), device="cpu", max_running_jobs=0))


BUILDERS = {"coordinator": _coordinator, "student": _student, "teacher": _teacher, "trainer": _trainer}


# The coverage phase enumerates every boundary and example combination (hundreds of calls for one rollout
# operation), which the time budget cannot hold; explicit examples and fuzzing (positive and negative) stay, with a
# fixed seed so a failure reproduces.
CONFIG = SchemathesisConfig.from_dict({"seed": 20250611, "phases": {"coverage": {"enabled": False}}})


def openapi_schema(service: str):
    """The service's OpenAPI document as its app serves it: routes do not depend on the config, and no lifespan
    runs here, so the placeholder Redis URL is never dialled."""
    with tempfile.TemporaryDirectory() as home:
        app = BUILDERS[service](Path(home), "redis://127.0.0.1:1")
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
    return _coordinator(contract_home, redis_url)


@pytest.fixture
def student_app(contract_home):
    return _student(contract_home)


@pytest.fixture
def teacher_app(contract_home):
    return _teacher(contract_home)


@pytest.fixture
def trainer_app(contract_home):
    return _trainer(contract_home)
