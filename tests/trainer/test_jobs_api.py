"""The jobs API in-process: validation (422 naming field or line), idempotent creation, state machine, events.

The app here never starts a training process (`max_running_jobs=0` keeps jobs queued); training through
the service runs in the slow end-to-end tests.
"""

import json

import pytest
from fastapi.testclient import TestClient

from shared.schemas.training import TERMINAL_STATES, VALID_TRANSITIONS, JobState
from shared.settings import Settings
from services.trainer.app import create_app
from services.trainer.config import TrainerConfig
from tests.openapi_checks import undescribed

GOOD = {"messages": [{"role": "user", "content": "Compute 2 + 2."}, {"role": "assistant", "content": "4"}]}
NO_ASSISTANT = {"messages": [{"role": "user", "content": "Compute 2 + 2."}]}


@pytest.fixture
def client(score_home, tmp_path):
    # The built-in models come from the session's SCORE_HOME; jobs and checkpoints go to a fresh one.
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "builtin").symlink_to(score_home / "models" / "builtin")
    # Dataset files are written to tmp_path, outside SCORE_HOME: the operator's allow-list admits it.
    config = TrainerConfig(settings=Settings(home=home, allowed_paths=[tmp_path]), max_running_jobs=0)
    with TestClient(create_app(config)) as client:
        yield client


def _error(response, status=422):
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_rows_without_assistant_turn_name_the_row(client):
    rows = [GOOD, GOOD, GOOD, NO_ASSISTANT]
    error = _error(client.post("/v1/jobs", json={"dataset": {"rows": rows}}))
    assert error["param"] == "body.dataset.rows.3"
    assert "assistant" in error["message"]


def test_empty_dataset(client, tmp_path):
    error = _error(client.post("/v1/jobs", json={"dataset": {"rows": []}}))
    assert error["param"] == "body.dataset.rows"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    error = _error(client.post("/v1/jobs", json={"dataset": {"path": str(empty)}}))
    assert error["param"] == "body.dataset.path" and "no conversations" in error["message"]
    error = _error(client.post("/v1/jobs", json={"dataset": {}}))
    assert error["param"] == "body.dataset"


def test_jsonl_errors_name_the_line(client, tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text("\n".join([json.dumps(GOOD)] * 3 + ['{"messages": [']) + "\n")
    error = _error(client.post("/v1/jobs", json={"dataset": {"path": str(bad_json)}}))
    assert error["param"] == "body.dataset.path" and "line 4" in error["message"] and "JSON" in error["message"]
    no_assistant = tmp_path / "no_assistant.jsonl"
    no_assistant.write_text("\n".join(json.dumps(r) for r in [GOOD, GOOD, GOOD, NO_ASSISTANT]) + "\n")
    error = _error(client.post("/v1/jobs", json={"dataset": {"path": str(no_assistant)}}))
    assert "line 4" in error["message"] and "assistant" in error["message"]
    error = _error(client.post("/v1/jobs", json={"dataset": {"path": str(tmp_path / "missing.jsonl")}}))
    assert error["param"] == "body.dataset.path"


def test_unknown_base_checkpoint(client):
    error = _error(client.post("/v1/jobs", json={"base": "no-such-model/v3", "dataset": {"rows": [GOOD]}}))
    assert error["param"] == "body.base" and "no-such-model" in error["message"]


def test_a_broken_adapter_base_is_refused_at_creation(client, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (adapter / "tokenizer.json").write_text("{}")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}))
    error = _error(client.post("/v1/jobs", json={"base": str(adapter), "dataset": {"rows": [GOOD]}}))
    assert error["param"] == "body.base" and "base_model_name_or_path" in error["message"]
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing was queued


def test_hyperparameter_validation_says_what_to_change(client):
    error = _error(client.post("/v1/jobs", json={"dataset": {"rows": [GOOD]}, "hyperparameters": {"learning_rate": 0}}))
    assert error["param"] == "body.hyperparameters.learning_rate"
    error = _error(client.post("/v1/jobs", json={
        "dataset": {"rows": [GOOD]}, "hyperparameters": {"max_seq_length": 4096, "micro_batch_tokens": 1024}}))
    assert error["param"] == "body.hyperparameters" and "raise micro_batch_tokens" in error["message"]
    error = _error(client.post("/v1/jobs", json={"dataset": {"rows": [GOOD]}, "hyperparameters": {"lr": 1e-3}}))
    assert error["param"] == "body.hyperparameters.lr"


def test_create_is_idempotent_with_a_caller_id_and_persists(client):
    body = {"dataset": {"rows": [GOOD]}, "job_id": "unit-job-1", "output_name": "unit-out"}
    first = client.post("/v1/jobs", json=body)
    assert first.status_code == 201
    job = first.json()
    assert job["state"] == "queued" and job["base"] == "builtin:student" and job["output_name"] == "unit-out"
    again = client.post("/v1/jobs", json=body)
    assert again.status_code == 200 and again.json()["id"] == "unit-job-1"
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == ["unit-job-1"]
    assert client.get("/v1/jobs/unit-job-1").json()["hyperparameters"]["learning_rate"] == job["hyperparameters"]["learning_rate"]
    assert _error(client.get("/v1/jobs/nope"), 404)["type"] == "not_found"


def test_cancel_then_cancel_again_is_a_conflict(client):
    job = client.post("/v1/jobs", json={"dataset": {"rows": [GOOD]}}).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    error = _error(client.post(f"/v1/jobs/{job['id']}/cancel"), 409)
    assert "cancelled" in error["message"]
    lines = client.get(f"/v1/jobs/{job['id']}/events").text.splitlines()
    states = [json.loads(line).get("state") for line in lines]
    assert states == ["queued", "cancelled"]
    later = client.get(f"/v1/jobs/{job['id']}/events", params={"after": 0}).text.splitlines()
    assert [json.loads(line)["seq"] for line in later] == [1]
    stream = client.get(f"/v1/jobs/{job['id']}/events", params={"stream": "true"})
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.count("event: state") == 2  # a finished job's stream ends after its last event


def test_state_machine_is_explicit():
    assert TERMINAL_STATES == {JobState.succeeded, JobState.failed, JobState.cancelled}
    assert JobState.running in VALID_TRANSITIONS[JobState.queued]
    assert JobState.queued in VALID_TRANSITIONS[JobState.running]  # resume after a restart
    assert all(not VALID_TRANSITIONS[state] for state in TERMINAL_STATES)


def test_openapi_fields_are_described(client):
    seen, missing = undescribed(client.get("/openapi.json").json())
    assert {"SFTHyperparameters", "JobRequest", "JobInfo", "DatasetSpec", "GRPOHyperparameters"} <= seen
    assert not missing, missing


def test_jobs_need_the_bearer_token_when_one_is_set(score_home, tmp_path):
    config = TrainerConfig(settings=Settings(home=tmp_path, api_token="trainer-secret-1"), max_running_jobs=0)
    with TestClient(create_app(config)) as client:
        assert client.get("/health").status_code == 200
        assert _error(client.get("/v1/jobs"), 401)["param"] == "header.authorization"
        authorized = client.get("/v1/jobs", headers={"Authorization": "Bearer trainer-secret-1"})
        assert authorized.status_code == 200 and authorized.json() == {"jobs": []}


def test_nproc_beyond_the_machine_is_422_naming_it(client):
    from services.trainer.sft.jobs import machine_processes

    limit, _ = machine_processes("cpu")
    if limit >= 64:
        pytest.skip("the schema's own limit (64) is below this machine's cores")
    body = {"dataset": {"rows": [GOOD]}, "hyperparameters": {"nproc": limit + 1, "device": "cpu"}}
    error = _error(client.post("/v1/jobs", json=body))
    assert error["param"] == "body.hyperparameters.nproc" and f"at most {limit}" in error["message"]
    assert client.get("/v1/jobs").json()["jobs"] == []
    body["hyperparameters"]["nproc"] = limit
    assert client.post("/v1/jobs", json=body).status_code == 201


def test_datasets_and_base_checkpoints_stay_under_the_allowed_directories(client):
    error = _error(client.post("/v1/jobs", json={"dataset": {"path": "/dev/zero"}}))
    assert error["param"] == "body.dataset.path" and "outside the allowed directories" in error["message"]
    error = _error(client.post("/v1/jobs", json={"base": "/etc", "dataset": {"rows": [GOOD]}}))
    assert error["param"] == "body.base" and "outside the allowed directories" in error["message"]
