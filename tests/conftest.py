"""Shared fixtures: one embedded Redis and one SCORE_HOME with the built-in models for the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def redis_server():
    from shared.redis_server import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def score_home(tmp_path_factory):
    from shared.models.builtin import ROLES, copy_current_builtins, ensure_builtin_model
    from shared.settings import get_settings

    home = tmp_path_factory.mktemp("score_home")
    # The models `scripts/setup.sh` built into the default SCORE_HOME, when their recipe is current: a copy stands
    # for a build (about a minute of CPU on 2 cores, several on a loaded box). Otherwise they are built here.
    copy_current_builtins(Path(os.environ.get("SCORE_HOME") or Path.home() / ".score"), home)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCORE_HOME", str(home))
        get_settings.cache_clear()
        for role in ROLES:
            ensure_builtin_model(role, home)
        yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def student_model_dir(score_home):
    from shared.models.builtin import ensure_builtin_model

    return ensure_builtin_model("student", score_home)


def pytest_collection_modifyitems(config, items):
    """The longest tests first (a test's own timeout stands for its length, then `slow`), stable otherwise.

    With `-n 2 --dist load` (`make test`) the two workers then start on the end-to-end runs, and the many short tests fill
    in around them; collected last, a 4-minute demo would start when the other worker had nothing left to do.
    """
    def expected_length(item) -> tuple[float, bool]:
        timeout = item.get_closest_marker("timeout")
        return (float(timeout.args[0]) if timeout and timeout.args else 0.0,
                item.get_closest_marker("slow") is not None)

    items.sort(key=expected_length, reverse=True)
