"""A run config cannot redirect the coordinator's API token, nor make it open arbitrary files."""

from __future__ import annotations

import json
import os

import pytest
from fastapi.testclient import TestClient

from services.coordinator.app import create_app
from services.coordinator.config import CoordinatorConfig
from services.coordinator.context import services_for
from shared.schemas.run_config import RunConfig
from shared.settings import Settings

TOKEN = "run-bounds-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SMALL = {"n_bc_init": 2, "n_train": 2, "n_rl": 1, "n_eval": 2}


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


def _client(redis_url, home, **settings):
    app = create_app(CoordinatorConfig(workers=0, settings=Settings(home=home, redis_url=redis_url, **settings)))
    return TestClient(app)


def _error(response, status=422) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_with_a_token_runs_may_only_name_the_configured_service_urls(redis_url, home):
    with _client(redis_url, home, api_token=TOKEN, student_url="http://student:8001") as client:
        error = _error(client.post("/v1/runs", headers=AUTH,
                                   json={"tasks": SMALL, "services": {"teacher_url": "http://attacker.example:80"}}))
        assert error["param"] == "body.services.teacher_url" and "SCORE_API_TOKEN" in error["message"]
        same = client.post("/v1/runs", headers=AUTH,
                           json={"tasks": SMALL, "services": {"student_url": "http://student:8001/"}})
        assert same.status_code == 201, same.text
        assert [r["id"] for r in client.get("/v1/runs", headers=AUTH).json()["runs"]] == [same.json()["id"]]


def test_the_token_is_never_attached_to_a_url_that_is_not_configured(tmp_path):
    settings = Settings(home=tmp_path, api_token=TOKEN)
    config = RunConfig(services={"student_url": "http://elsewhere:9000"})
    services = services_for(config, settings)
    assert "authorization" not in services.student.http.headers
    assert services.teacher.http.headers["authorization"] == f"Bearer {TOKEN}"


def test_task_files_stay_under_score_home_are_regular_and_capped(redis_url, home, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"id": "a", "question": "1+1?", "true_answer": 2}) + "\n")
    (home / "files").mkdir(parents=True)
    big = home / "files" / "big.jsonl"
    big.write_text("".join(json.dumps({"id": f"t{i}", "question": f"What is {i} + {i}?", "true_answer": 2 * i}) + "\n"
                           for i in range(200)))
    fifo = home / "files" / "fifo.jsonl"
    os.mkfifo(fifo)
    with _client(redis_url, home, max_task_file_bytes=4096) as client:
        for path, words in [("/dev/zero", "outside"), (str(outside), "outside"), (f"{home}/../outside.jsonl", "outside"),
                            (str(fifo), "not a regular file"), (str(big), "limit is 4096")]:
            error = _error(client.post("/v1/runs", json={"tasks": {"path": path}}))
            assert error["param"] == "tasks.path" and words in error["message"], (path, error)
    with _client(redis_url, home, allowed_paths=["/dev"]) as client:
        error = _error(client.post("/v1/runs", json={"tasks": {"path": "/dev/zero"}}))
        assert error["param"] == "tasks.path" and "not a regular file" in error["message"]
    with _client(redis_url, home, allowed_paths=[tmp_path]) as client:
        assert _error(client.post("/v1/runs", json={"tasks": {"path": str(outside)}}))["param"] == "tasks.n_train"
        error = _error(client.post("/v1/runs", json={"tasks": {"path": str(big), "eval_path": "/dev/zero"}}))
        assert error["param"] == "tasks.eval_path"
