"""The runs API in-process against a real Redis, with no stage workers: validation, state, auth, OpenAPI."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from services.coordinator.app import create_app
from services.coordinator.config import CoordinatorConfig
from shared.settings import Settings
from tests.openapi_checks import undescribed



@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def client(redis_url, home):
    app = create_app(CoordinatorConfig(workers=0, settings=Settings(home=home, redis_url=redis_url)))
    with TestClient(app) as client:
        yield client


SMALL = {"tasks": {"n_bc_init": 2, "n_train": 2, "n_rl": 1, "n_eval": 2}}


def test_a_run_is_created_listed_followed_and_cancelled(client, home):
    created = client.post("/v1/runs", json={"name": "api-test", **SMALL})
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["state"] == "queued" and run["name"] == "api-test"
    assert run["config"]["mps"]["max_repairs"] == 3 and run["config"]["rl"]["rewards"]["equivalent"] == 0.5
    pools = json.loads((home / "runs" / run["id"] / "tasks.json").read_text())
    assert [len(pools[k]) for k in ("bc_init", "train", "rl", "eval")] == [2, 2, 1, 2]
    train_ids = {t["id"] for k in ("bc_init", "train", "rl") for t in pools[k]}
    assert not train_ids & {t["id"] for t in pools["eval"]}

    assert [r["id"] for r in client.get("/v1/runs").json()["runs"]] == [run["id"]]
    assert client.get(f"/v1/runs/{run['id']}").json()["stages"]["bc_init"]["state"] == "pending"
    events = client.get(f"/v1/runs/{run['id']}/events", params={"follow": "false"})
    assert events.headers["content-type"].startswith("text/event-stream")
    assert "event: state" in events.text and '"state": "queued"' in events.text.replace('":"', '": "')

    cancelled = client.post(f"/v1/runs/{run['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"/v1/runs/{run['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]
    report = client.get(f"/v1/runs/{run['id']}/report")
    assert report.status_code == 404 and "report.md" in report.json()["error"]["message"]


def test_a_malformed_config_names_the_field_and_creates_nothing(client, home):
    cases = [
        ({"mps": {"max_repair": 3}}, "mps.max_repair"),
        ({"rl": {"group_size": 1}}, "rl.group_size"),
        ({"tasks": {"families": ["chess"]}}, "tasks.families"),
        ({"services": {"student_url": "student:8001"}}, "services.student_url"),
        ({"bc_init": {"hyperparameters": {"learning_rate": -1}}}, "bc_init.hyperparameters.learning_rate"),
    ]
    for body, field in cases:
        response = client.post("/v1/runs", json=body)
        assert response.status_code == 422, body
        assert field in response.json()["error"]["param"], response.json()
    assert client.get("/v1/runs").json()["runs"] == []
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_a_bad_task_file_names_the_line_and_creates_nothing(client, home):
    files = home / "files"  # task files must lie under SCORE_HOME (or SCORE_ALLOWED_PATHS)
    files.mkdir(parents=True)
    tasks = files / "tasks.jsonl"
    tasks.write_text('{"id": "a", "question": "1+1?", "true_answer": 2}\n{"id": "b", "question": 7, "true_answer": 1}\n')
    response = client.post("/v1/runs", json={"tasks": {"path": str(tasks)}})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "tasks.path" and "line 2" in error["message"] and "question" in error["message"]

    missing = client.post("/v1/runs", json={"tasks": {"path": str(files / "nope.jsonl")}})
    assert missing.status_code == 422 and "nope.jsonl" in missing.json()["error"]["message"]

    few = files / "few.jsonl"
    few.write_text("".join(json.dumps({"id": f"t{i}", "question": f"What is {i} + {i}?", "true_answer": 2 * i}) + "\n"
                           for i in range(5)))
    too_few = client.post("/v1/runs", json={"tasks": {"path": str(few), "n_bc_init": 10}})
    assert too_few.status_code == 422 and too_few.json()["error"]["param"] == "tasks.n_train"
    assert client.get("/v1/runs").json()["runs"] == []
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_unknown_runs_are_404(client):
    for method, path in [("GET", "/v1/runs/run-nope"), ("POST", "/v1/runs/run-nope/cancel"),
                         ("GET", "/v1/runs/run-nope/trajectories"), ("GET", "/v1/runs/run-nope/events")]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "run-nope" in response.json()["error"]["message"]


def test_openapi_describes_every_operation_and_field(client):
    _, missing = undescribed(client.get("/openapi.json").json())
    assert missing == []


def test_scoresft_data_is_repaired_plus_kept_self_solved_plus_replayed_cold_start():
    from services.coordinator.datasets import sft_records
    from shared.schemas.agent import Task
    from shared.schemas.trajectories import TrajectoryRecord

    def record(task_id, stage, pool, outcome, correct=True):
        return TrajectoryRecord(run_id="r", stage=stage, pool=pool, task=Task(id=task_id, question="q?", true_answer=1),
                                outcome=outcome, steps=[], correct=correct)

    mps = [record("a", "mps", "train", "repaired"), record("b", "mps", "train", "hard", False),
           record("c", "mps", "rl", "repaired"), *[record(f"s{i}", "mps", "train", "self_solved") for i in range(200)]]
    cold = [record(f"t{i}", "bc_init", "bc_init", "teacher_solved") for i in range(200)]
    cold.append(record("wrong", "bc_init", "bc_init", "teacher_failed", False))

    plain = sft_records(mps, 0.5, "r")
    assert {r.task.id for r in plain} >= {"a"} and not {r.task.id for r in plain} & {"b", "c"}
    assert 60 < sum(r.outcome == "self_solved" for r in plain) < 140  # about half, by a stable hash
    assert sft_records(mps, 0.5, "r") == plain  # the same choice on every call (redeliveries, exports)
    replayed = sft_records(mps, 0.5, "r", cold_start=cold, replay=1.0)
    assert len(replayed) == len(plain) + 200 and "wrong" not in {r.task.id for r in replayed}
