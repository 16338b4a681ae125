"""Rules between settings (an engine and its base URL, the coordinator's Redis) are validators of the settings
models, so they hold however the settings are built: from the environment, from `score serve` flags, or in code.
Every refusal names the field it is about."""

from __future__ import annotations

import importlib
import os
import re

import pytest
from pydantic import ValidationError

from shared.settings import describe_invalid

CONFIGS = {"coordinator": "CoordinatorConfig", "student": "StudentConfig", "teacher": "TeacherConfig"}
VLLM = "http://vllm:8000/v1"

# (service, environment, the same settings as flags, what the refusal says)
RULES = [
    pytest.param("student", {"SCORE_STUDENT_ENGINE": "openai"}, ["--engine", "openai"],
                 r"base_url is unset \(SCORE_STUDENT_BASE_URL, --base-url\): engine openai needs",
                 id="student-openai-needs-base-url"),
    pytest.param("student", {"SCORE_STUDENT_BASE_URL": VLLM}, ["--base-url", VLLM],
                 r"base_url \(SCORE_STUDENT_BASE_URL, --base-url\) applies only to engine openai, not transformers",
                 id="student-base-url-only-with-openai"),
    pytest.param("student", {"SCORE_STUDENT_ENGINE": "expert"}, ["--engine", "expert"],
                 r"engine: expert is the teacher's scripted solver", id="student-no-expert"),
    pytest.param("teacher", {"SCORE_TEACHER_ENGINE": "openai"}, ["--engine", "openai"],
                 r"base_url is unset \(SCORE_TEACHER_BASE_URL, --base-url\): engine openai needs",
                 id="teacher-openai-needs-base-url"),
    pytest.param("teacher", {"SCORE_TEACHER_ENGINE": "transformers", "SCORE_TEACHER_BASE_URL": VLLM},
                 ["--engine", "transformers", "--base-url", VLLM],
                 r"base_url \(SCORE_TEACHER_BASE_URL, --base-url\) applies only to engine openai, not transformers",
                 id="teacher-base-url-only-with-openai"),
    pytest.param("teacher", {"SCORE_TEACHER_ENGINE": "expert", "SCORE_TEACHER_MODEL": "student-sft"},
                 ["--engine", "expert", "--model", "student-sft"],
                 r"model \(SCORE_TEACHER_MODEL, --model\) does not apply to engine expert",
                 id="teacher-expert-no-model"),
    pytest.param("teacher", {"SCORE_TEACHER_ENGINE": "expert", "SCORE_TEACHER_DEVICE": "cpu"},
                 ["--engine", "expert", "--device", "cpu"],
                 r"device \(SCORE_TEACHER_DEVICE, --device\) does not apply to engine expert",
                 id="teacher-expert-no-device"),
    pytest.param("coordinator", {}, [], r"redis_url is unset: the coordinator needs Redis; set SCORE_REDIS_URL",
                 id="coordinator-needs-redis"),
]


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    """No SCORE_* variable of the machine running the tests, and a data directory of the test's own."""
    for name in list(os.environ):
        if name.startswith("SCORE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SCORE_HOME", str(tmp_path))
    return monkeypatch


def config_class(service: str):
    return getattr(importlib.import_module(f"services.{service}.config"), CONFIGS[service])


@pytest.mark.parametrize("service, environment, flags, message", RULES)
def test_rule_holds_for_settings_from_the_environment(clean_environment, service, environment, flags, message):
    for name, value in environment.items():
        clean_environment.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        config_class(service)()
    assert re.search(message, describe_invalid(refused.value)), describe_invalid(refused.value)


@pytest.mark.parametrize("service, environment, flags, message", RULES)
def test_rule_holds_for_settings_from_flags(clean_environment, capsys, service, environment, flags, message):
    import shared.observability
    from services.cli import main

    # The refusal comes before the service would start; the test's own logging stays as it is.
    clean_environment.setattr(shared.observability, "configure_logging", lambda *args, **kwargs: None)
    assert main(["serve", service, *flags]) == 2
    stderr = capsys.readouterr().err
    assert re.search(f"^error: {message}", stderr, re.MULTILINE), stderr
    assert "input_value" not in stderr  # no values echoed back: they may hold the API token


def test_flags_and_environment_are_checked_together(clean_environment):
    """A base URL from the environment and `--engine openai` from the command line make a valid student."""
    from services.cli import build_parser
    from services.student.app import app_from_args
    from shared.settings import Settings

    clean_environment.setenv("SCORE_STUDENT_BASE_URL", VLLM)
    args = build_parser().parse_args(["serve", "student", "--engine", "openai"])
    app = app_from_args(args, Settings())  # not refused; the engine would connect only when the app starts
    assert app.title == "SCoRe student service"


def test_rule_holds_for_settings_built_in_code(clean_environment):
    from services.teacher.config import TeacherConfig
    from shared.settings import Settings

    secret = "a-real-secret-token"
    with pytest.raises(ValidationError, match="base_url is unset") as refused:
        TeacherConfig(engine="openai", settings=Settings(api_token=secret))
    assert secret not in repr(refused.value.errors())  # its input: the whole config, the shared settings with it
    assert TeacherConfig(engine="openai", base_url=VLLM).base_url == VLLM
