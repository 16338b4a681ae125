"""Every model reference form starts each model service on the model it names, read by the one resolver,
`shared.checkpoints.resolve_model`:

    builtin:<role>     a built-in tiny model
    name               the latest version of a published checkpoint series (`<run>-rl`, a run's RL series, too)
    name/vN            one version of a series
    a directory        a Hugging Face checkpoint folder

The student (`--model`), the teacher (`score serve teacher --model`, or SCORE_TEACHER_MODEL; transformers engine)
and the trainer (an SFT job's and an RL session's `base`) are each started on every form, with real tiny checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.checkpoints import CheckpointStore, served_name
from shared.models.builtin import ensure_builtin_model
from shared.sandbox.limits import SandboxLimits
from shared.settings import Settings
from shared.tasks.builtin import builtin_tasks
from tests.trainer.rl_sessions import MADE_UP, batch, new_id, trainer_app

SERIES = "refs-student"
RL_SERIES = "run-20260101-000000-abc123-rl"  # what the coordinator's RL stage publishes into: `<run id>-rl`
FORMS = ("builtin", "name", "name/vN", "directory", "run-rl")


@pytest.fixture(scope="module")
def published(score_home):
    """Two published versions of the built-in student in each series, as finished runs leave them."""
    source = ensure_builtin_model("student", score_home)
    store = CheckpointStore(score_home / "checkpoints")

    def copy(directory: Path) -> None:
        shutil.copytree(source, directory, dirs_exist_ok=True)

    series = {name: [store.publish(name, copy) for _ in range(2)] for name in (SERIES, RL_SERIES)}
    return {"home": score_home, **series}


def reference(form: str, published, role: str = "student") -> tuple[str, Path, str]:
    """(the reference, the directory it must resolve to, its lineage label) for one form."""
    v1, v2 = published[SERIES]
    rl_latest = published[RL_SERIES][-1]
    if form == "builtin":
        return f"builtin:{role}", ensure_builtin_model(role, published["home"]), f"builtin:{role}"
    return {
        "name": (SERIES, Path(v2.path), f"{SERIES}/v2"),  # a series name is its latest version
        "name/vN": (f"{SERIES}/v1", Path(v1.path), f"{SERIES}/v1"),
        "directory": (v1.path, Path(v1.path), v1.path),
        "run-rl": (RL_SERIES, Path(rl_latest.path), f"{RL_SERIES}/v2"),
    }[form]


# --- student --------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_the_student_serves_every_reference_form(score_home, published, form):
    from services.student.app import create_app
    from services.student.config import StudentConfig

    ref, _, label = reference(form, published)
    config = StudentConfig(settings=Settings(home=score_home), device="cpu", model=ref,
                           sandbox=SandboxLimits(step_timeout_s=2.0))
    with TestClient(create_app(config)) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [served_name(label)]
        assert Path(client.get("/v1/weights").json()["path"]) == reference(form, published)[1]
        reply = client.post("/v1/chat/completions", json={
            "model": served_name(label), "messages": [{"role": "user", "content": "Add 2 and 3."}], "max_tokens": 4,
            "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] >= 1


def test_an_unknown_reference_stops_the_student_with_what_was_looked_for(score_home):
    from services.student.app import build_engine
    from services.student.config import StudentConfig

    config = StudentConfig(settings=Settings(home=score_home), device="cpu", model=f"{SERIES}-missing/v3")
    with pytest.raises(KeyError, match="neither a published checkpoint"):
        build_engine(config)


# --- teacher --------------------------------------------------------------------------------------


def _teacher_app(score_home, argv: list[str]):
    """The app `score serve teacher <argv>` runs."""
    from services.cli import build_parser
    from services.teacher.app import app_from_args

    return app_from_args(build_parser().parse_args(["serve", "teacher", *argv]), Settings(home=score_home))


def _teacher_solves_a_task(client, model_name: str) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["engine"] == "transformers" and ready.json()["model"] == model_name
    task = builtin_tasks(family="arith", split="eval", n=1, seed=5)[0]
    solved = client.post("/v1/rollouts", json={"items": [{"task": task.model_dump(mode="json")}], "max_turns": 1})
    assert solved.status_code == 200, solved.text
    assert solved.json()["cost"]["teacher_tokens"] > 0  # the model wrote the turn


@pytest.fixture
def small_teacher(monkeypatch):
    """Settings the teacher reads from its environment, as `score serve teacher` does: a short turn on the CPU."""
    monkeypatch.setenv("SCORE_TEACHER_DEVICE", "cpu")
    monkeypatch.setenv("SCORE_TEACHER_MAX_STEP_TOKENS", "8")
    monkeypatch.setenv("SCORE_TEACHER_SANDBOX", '{"step_timeout_s": 5}')


@pytest.mark.parametrize("form", FORMS)
def test_score_serve_teacher_takes_every_reference_form(score_home, published, small_teacher, form):
    ref, _, label = reference(form, published, role="teacher")
    with TestClient(_teacher_app(score_home, ["--engine", "transformers", "--model", ref])) as client:
        _teacher_solves_a_task(client, served_name(label))


def test_the_teacher_reads_its_model_reference_from_the_environment(score_home, published, small_teacher,
                                                                    monkeypatch):
    monkeypatch.setenv("SCORE_TEACHER_MODEL", SERIES)
    with TestClient(_teacher_app(score_home, ["--engine", "transformers"])) as client:
        _teacher_solves_a_task(client, f"{SERIES}/v2")


def test_an_unknown_reference_stops_the_teacher_with_what_was_looked_for(score_home, small_teacher):
    app = _teacher_app(score_home, ["--engine", "transformers", "--model", f"{SERIES}-missing"])
    with pytest.raises(ValueError, match="neither a published checkpoint"):
        with TestClient(app):
            pass


# --- trainer --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(score_home):
    # max_running_jobs 0: jobs stay queued, so their resolved base can be read without training.
    from services.trainer.app import create_app
    from services.trainer.config import TrainerConfig

    config = TrainerConfig(device="cpu", settings=Settings(home=score_home), max_running_jobs=0)
    with TestClient(create_app(config)) as client:
        yield client


ROWS = [{"messages": [{"role": "user", "content": "Compute 2 + 2."}, {"role": "assistant", "content": "4"}]}]


@pytest.mark.parametrize("form", FORMS)
def test_an_sft_job_starts_from_every_reference_form(score_home, published, trainer, form):
    ref, directory, label = reference(form, published)
    created = trainer.post("/v1/jobs", json={"base": ref, "dataset": {"rows": ROWS}, "job_id": new_id("refs")})
    assert created.status_code == 201, created.text
    assert created.json()["base"] == label
    # What the training process will load: the spec the service wrote for it.
    spec = json.loads((score_home / "trainer" / "jobs" / created.json()["id"] / "spec.json").read_text())
    assert (Path(spec["base_path"]), spec["base_label"]) == (directory, label)
    assert trainer.post(f"/v1/jobs/{created.json()['id']}/cancel").status_code == 200


@pytest.mark.parametrize("form", FORMS)
def test_an_rl_session_trains_from_every_reference_form(score_home, published, form):
    ref, directory, label = reference(form, published)
    with TestClient(trainer_app(score_home)) as client:
        created = client.post("/v1/rl/sessions", json={
            "session_id": new_id("refs"), "base": ref, "hyperparameters": {**MADE_UP, "learning_rate": 1e-2}})
        assert created.status_code == 201, created.text
        session = created.json()
        assert (session["base"], Path(session["base_path"])) == (label, directory)
        step = client.post(f"/v1/rl/sessions/{session['id']}/steps", json=batch())
        assert step.status_code == 200, step.text
    [version] = CheckpointStore(score_home / "checkpoints").versions(session["output_name"])
    assert version.parent == label


def test_an_unknown_base_is_refused_naming_the_field(trainer):
    for path, body in (("/v1/jobs", {"base": f"{SERIES}/v9", "dataset": {"rows": ROWS}}),
                       ("/v1/rl/sessions", {"base": f"{SERIES}-missing"})):
        refused = trainer.post(path, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["param"] == "body.base"
