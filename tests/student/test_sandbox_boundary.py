"""The student fails closed without the sandbox boundary: /ready is 503 and rollouts are refused, both saying
what is missing; the explicit development opt-out runs code and says so. (In-process app, real sandboxes.)"""

import pytest
from fastapi.testclient import TestClient

import shared.sandbox.boundary as boundary_module
from shared.settings import Settings
from services.student.app import create_app
from tests.student.conftest import student_config

ITEM = {"task": {"id": "t", "question": "Run the code."},
        "prefix_steps": [{"kind": "plan", "thought": "run it"},
                         {"kind": "act", "thought": "", "code": "import os\nfinal_answer_print(os.getuid())"}]}


def test_ready_reports_the_boundary(client):
    sandbox = client.get("/ready").json()["sandbox"]
    assert sandbox["ok"] and sandbox["boundary"] == "bwrap" and all(sandbox["layers"].values())
    episode = client.post("/v1/rollouts", json={"items": [ITEM], "max_turns": 0}).json()["episodes"][0]
    assert episode["final_answer"] == "65534"


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))   # bwrap cannot be found
    monkeypatch.setattr(boundary_module, "_checked", {})


def test_without_the_boundary_ready_is_503_and_code_is_refused(score_home, no_bwrap):
    with TestClient(create_app(student_config(score_home))) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503
        message = ready.json()["error"]["message"]
        assert "bubblewrap" in message and "SCORE_SANDBOX_UNCONFINED" in message
        refused = client.post("/v1/rollouts", json={"items": [ITEM], "max_turns": 0})
        assert refused.status_code == 503 and "bubblewrap" in refused.json()["error"]["message"]


def test_the_development_opt_out_runs_code_and_says_so(score_home, no_bwrap):
    config = student_config(score_home, settings=Settings(home=score_home, sandbox_unconfined=True))
    with TestClient(create_app(config)) as client:
        sandbox = client.get("/ready").json()["sandbox"]
        assert sandbox["ok"] and sandbox["mode"] == "unconfined" and sandbox["boundary"] == "none"
        assert not sandbox["layers"]["own-filesystem"] and sandbox["layers"]["audit-hooks"]
        episode = client.post("/v1/rollouts", json={"items": [ITEM], "max_turns": 0}).json()["episodes"][0]
        assert episode["final_answer"] is not None
