"""The configuration reference is generated from the settings models, and the models really read the environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current():
    result = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_reference_names_every_service_variable():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for variable in ("SCORE_API_TOKEN", "SCORE_REDIS_URL", "SCORE_COORDINATOR_WORKERS", "SCORE_STUDENT_ENGINE",
                     "SCORE_TEACHER_ENGINE", "SCORE_TRAINER_MAX_RUNNING_JOBS", "`rl.hyperparameters.epsilon`"):
        assert variable in text


def test_service_settings_come_from_the_environment(monkeypatch):
    from services.student.config import StudentConfig
    from services.teacher.config import TeacherConfig
    from services.trainer.config import TrainerConfig

    monkeypatch.setenv("SCORE_STUDENT_ENGINE", "openai")
    monkeypatch.setenv("SCORE_STUDENT_BASE_URL", "http://vllm-student:8000/v1")
    monkeypatch.setenv("SCORE_STUDENT_SANDBOX", '{"step_timeout_s": 9}')
    monkeypatch.setenv("SCORE_TEACHER_ENGINE", "expert")
    monkeypatch.setenv("SCORE_TRAINER_MAX_RUNNING_JOBS", "3")
    student = StudentConfig()
    assert (student.engine, student.base_url, student.sandbox.step_timeout_s) == \
        ("openai", "http://vllm-student:8000/v1", 9)
    assert TeacherConfig().engine == "expert"
    assert TrainerConfig().max_running_jobs == 3
    explicit = "http://vllm-2:8000/v1"
    assert StudentConfig(base_url=explicit).base_url == explicit  # explicit values (CLI flags) win


def test_bad_environment_value_names_the_variable(monkeypatch):
    from pydantic import ValidationError

    from services.student.config import StudentConfig

    monkeypatch.setenv("SCORE_STUDENT_ENGINE", "vllm")
    with pytest.raises(ValidationError, match="engine"):
        StudentConfig()


def test_empty_variables_count_as_unset(monkeypatch):
    """Compose passes `${VAR:-}` as an empty value; that must mean the default, not an empty model path."""
    from services.student.config import StudentConfig

    monkeypatch.setenv("SCORE_STUDENT_MODEL", "")
    monkeypatch.setenv("SCORE_STUDENT_BASE_URL", "")
    assert StudentConfig().model is None and StudentConfig().base_url is None
