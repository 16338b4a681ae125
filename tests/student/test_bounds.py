"""What a request can make the student do is bounded: seeds, weight loads, prefix replays, episode time, and
an engine worker that no request can stop (and that `/ready` reports should it stop anyway)."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest
from fastapi.testclient import TestClient

from services.student.app import create_app
from shared.models.builtin import ensure_builtin_model
from shared.schemas.agent import MAX_TRAJECTORY_STEPS
from shared.schemas.sampling import SamplingParams
from tests.service_process import ServiceProcess
from tests.student.conftest import student_config

CHAT = {"messages": [{"role": "user", "content": "Compute 1 + 1."}], "max_tokens": 4, "temperature": 1.0}
PLAN = {"kind": "plan", "thought": "Add the numbers."}


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.fixture(scope="module")
def client(score_home):
    with TestClient(create_app(student_config(score_home))) as client:
        yield client


def test_a_seed_past_64_bits_is_422_naming_it_and_the_engine_keeps_serving(client):
    assert _error(client.post("/v1/chat/completions", json={**CHAT, "seed": 2**63}), 422)["param"] == "body.seed"
    assert _error(client.post("/v1/chat/completions", json={**CHAT, "seed": -1}), 422)["param"] == "body.seed"
    rollout = {"items": [{"task": {"id": "t", "question": "Compute 1 + 1."}}], "max_turns": 1,
               "sampling": {"max_tokens": 4, "seed": 2**64}}
    assert _error(client.post("/v1/rollouts", json=rollout), 422)["param"] == "body.sampling.seed"
    # The largest seed, offset by the choice index, wraps instead of overflowing.
    assert client.post("/v1/chat/completions", json={**CHAT, "seed": 2**63 - 1, "n": 3}).status_code == 200


def test_a_request_the_schema_did_not_stop_fails_alone(client):
    engine = client.app.state.serving.engine
    bad = SamplingParams.model_construct(**{**SamplingParams(max_tokens=4).model_dump(), "seed": 2**70})

    async def generate():
        return await asyncio.wait_for(engine.generate([1, 2, 3], bad), 60)

    with pytest.raises(ValueError, match="cannot sample"):
        client.portal.call(generate)
    assert engine.failure() is None
    assert client.post("/v1/chat/completions", json={**CHAT, "seed": 7}).status_code == 200
    assert client.get("/ready").status_code == 200


def test_weight_loads_are_confined_named_safely_and_only_grow(client, student_model_dir, score_home, tmp_path):
    assert _error(client.post("/v1/weights", json={"name": "../../x", "version": 1}), 422)["param"] == "body.name"
    outside = _error(client.post("/v1/weights", json={"path": str(tmp_path)}), 422)
    assert outside["param"] == "body.path" and "SCORE_ALLOWED_PATHS" in outside["message"]
    escape = _error(client.post("/v1/weights", json={"path": f"{score_home}/../../etc"}), 422)
    assert escape["param"] == "body.path"

    loaded = client.post("/v1/weights", json={"path": str(student_model_dir), "version": 3})
    assert loaded.status_code == 200 and loaded.json()["policy_version"] == 3
    lower = _error(client.post("/v1/weights", json={"path": str(student_model_dir), "version": 2}), 409)
    assert lower["param"] == "body.version" and "only grow" in lower["message"]
    again = client.post("/v1/weights", json={"path": str(student_model_dir), "version": 3})
    assert again.status_code == 200 and again.json()["policy_version"] == 3  # the same checkpoint: a no-op
    other = ensure_builtin_model("teacher", score_home)
    assert _error(client.post("/v1/weights", json={"path": str(other), "version": 3}), 409)["param"] == "body.version"
    assert client.get("/v1/weights").json()["policy_version"] == 3


def test_prefix_steps_are_capped(client):
    act = {"kind": "act", "thought": "Print.", "code": "print(1)"}
    item = {"task": {"id": "t", "question": "Print 1."}, "prefix_steps": [PLAN] + [act] * MAX_TRAJECTORY_STEPS}
    error = _error(client.post("/v1/rollouts", json={"items": [item], "max_turns": 0}), 422)
    assert error["param"] == "body.items.0.prefix_steps"


@pytest.fixture(scope="module")
def short_client(score_home):
    config = student_config(score_home, episode_timeout_s=1.0)
    with TestClient(create_app(config)) as client:
        yield client


def test_an_episode_stops_at_its_deadline_however_long_its_prefix(short_client):
    slow = {"kind": "act", "thought": "Wait.", "code": "import time\ntime.sleep(0.6)\nprint('waited')"}
    item = {"task": {"id": "t", "question": "Wait a while."}, "prefix_steps": [PLAN] + [slow] * 6}
    response = short_client.post("/v1/rollouts", json={"items": [item], "max_turns": 4,
                                                       "sampling": {"max_tokens": 8, "seed": 1}})
    assert response.status_code == 200, response.text
    [episode] = response.json()["episodes"]
    assert episode["stop_reason"] == "timeout"
    assert len(episode["steps"]) < 7 and episode["n_prefix_steps"] == len(episode["steps"])


def test_ready_is_503_and_generation_fails_fast_once_the_worker_is_gone(short_client):
    engine = short_client.app.state.serving.engine
    short_client.app.state.serving.engine._queue.put(object())  # not a request: the worker stops on it
    engine._worker.join(30)
    assert not engine._worker.is_alive()
    error = _error(short_client.get("/ready"), 503)
    assert "generation worker stopped" in error["message"]
    assert _error(short_client.post("/v1/chat/completions", json=CHAT), 503)["type"] == "unavailable"


@pytest.mark.slow
def test_a_student_process_refuses_a_huge_seed_keeps_generating_and_stops_on_sigterm(score_home, tmp_path):
    student = ServiceProcess("student", home=score_home, log_dir=tmp_path).wait_ready()
    try:
        url = f"{student.url}/v1/chat/completions"
        refused = httpx.post(url, json={**CHAT, "seed": 2**63}, timeout=60)
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "body.seed"
        assert httpx.post(url, json={**CHAT, "seed": 2**63 - 1}, timeout=60).status_code == 200
        assert httpx.get(f"{student.url}/ready", timeout=30).status_code == 200
        student.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then ends by the signal it caught; what matters is that nothing waits forever.
        assert student.process.wait(60) in (0, -signal.SIGTERM), student.log_tail()
        assert "Application shutdown complete" in student.log_tail()
    finally:
        student.stop()
