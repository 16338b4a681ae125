"""Every model reference form (`builtin:<role>`, a series `name`, `name/vN`, a directory) starts the student and
the teacher services and names the model the same way; the trainer's `base` takes the same forms (tested with
its jobs). One resolver, `shared.checkpoints.resolve_model`, serves them all."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from shared.checkpoints import CheckpointStore
from shared.models.builtin import ensure_builtin_model
from shared.sandbox.limits import SandboxLimits
from shared.settings import Settings

SERIES = "refs-student"


@pytest.fixture(scope="module")
def published(score_home):
    """Two published versions of the built-in student, as a finished run leaves them."""
    source = ensure_builtin_model("student", score_home)
    store = CheckpointStore(score_home / "checkpoints")
    refs = [store.publish(SERIES, lambda d: shutil.copytree(source, d, dirs_exist_ok=True)) for _ in range(2)]
    return source, refs


def _forms(published):
    source, (v1, v2) = published
    return {
        "builtin:student": (source, "builtin:student"),
        SERIES: (v2.path, f"{SERIES}/v2"),  # a series name is its latest version
        f"{SERIES}/v1": (v1.path, f"{SERIES}/v1"),
        v1.path: (v1.path, "v1"),  # a directory is served under its folder name
    }


# builtin:student is what every other student test serves.
@pytest.mark.parametrize("form", [SERIES, f"{SERIES}/v1", "directory"])
def test_the_student_serves_every_reference_form(score_home, published, form):
    from services.student.app import create_app
    from services.student.config import StudentConfig

    forms = _forms(published)
    ref = published[1][0].path if form == "directory" else form
    _, served_name = forms[ref]
    config = StudentConfig(settings=Settings(home=score_home), device="cpu", model=ref,
                           sandbox=SandboxLimits(step_timeout_s=2.0))
    with TestClient(create_app(config)) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [served_name]
        reply = client.post("/v1/chat/completions", json={
            "model": served_name, "messages": [{"role": "user", "content": "Add 2 and 3."}], "max_tokens": 4,
            "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1


def test_an_unknown_reference_stops_the_student_with_what_was_looked_for(score_home):
    from services.student.app import build_engine
    from services.student.config import StudentConfig

    config = StudentConfig(settings=Settings(home=score_home), device="cpu", model=f"{SERIES}-missing/v3")
    with pytest.raises(KeyError, match="neither a published checkpoint"):
        build_engine(config)


@pytest.mark.parametrize("form", [f"{SERIES}/v1"])
def test_the_teacher_serves_a_model_by_reference(score_home, published, form):
    from services.teacher.app import create_app
    from services.teacher.config import TeacherConfig

    config = TeacherConfig(settings=Settings(home=score_home), engine="transformers", model=form,
                           sandbox=SandboxLimits(step_timeout_s=2.0))
    with TestClient(create_app(config)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        assert form in ready.text
