"""The teacher as a real process over HTTP, and the judge against a real OpenAI-compatible server.

`score serve teacher --engine expert` runs as its own process. For the `openai` backend, the project's
student service runs as a real process with the tiny model and serves as the teacher's OpenAI-compatible
server (token-id completions for agent turns, chat completions for the judge's prompts).
"""

import httpx
import pytest
from fastapi.testclient import TestClient

from services.teacher.app import create_app
from tests.service_process import ServiceProcess
from tests.teacher.checks import assert_valid_correction
from tests.teacher.conftest import broken_items, teacher_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("teacher-logs")


def test_expert_teacher_process(score_home, logs):
    teacher = ServiceProcess("teacher", "--engine", "expert", home=score_home, log_dir=logs)
    try:
        teacher.wait_ready()
        items, positions = broken_items(12, seed=51)
        for strategy in ("verify", "judge"):
            response = httpx.post(f"{teacher.url}/v1/corrections", json={"items": items, "strategy": strategy}, timeout=120)
            assert response.status_code == 200, response.text
            corrections = response.json()["corrections"]
            assert [c["first_error_step"] for c in corrections] == positions
            for item, correction in zip(items, corrections):
                assert_valid_correction(correction, item)
        bad = httpx.post(f"{teacher.url}/v1/corrections", json={"items": [{**items[0], "steps": []}]}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "body.items.0.steps"
        judged = httpx.post(f"{teacher.url}/v1/judgements", timeout=30, json={"items": [
            {"kind": "answer", "prediction": "12", "true_answer": 12}]}).json()
        assert judged["judgements"][0]["equivalent"] is True
        metrics = httpx.get(f"{teacher.url}/metrics", timeout=10).text
        assert 'score_teacher_total{counter="corrections",service="teacher"} 24.0' in metrics
        assert "request_id=" in teacher.log_tail() and "corrections strategy=verify items=12" in teacher.log_tail()
    finally:
        teacher.stop()


@pytest.fixture(scope="module")
def student(score_home, logs):
    service = ServiceProcess("student", home=score_home, log_dir=logs)
    try:
        yield service.wait_ready()
    finally:
        service.stop()


def test_judge_and_verify_against_a_real_openai_compatible_server(student, score_home):
    config = teacher_config(score_home, engine="openai", base_url=f"{student.url}/v1", max_step_tokens=32,
                            max_judge_tokens=48, rollout_max_turns=2, judge_attempts=2, max_rollouts_per_item=1)
    items, _ = broken_items(2, seed=52)
    with TestClient(create_app(config)) as teacher:
        assert teacher.get("/ready").json()["engine"] == "openai"
        for strategy in ("judge", "verify"):
            response = teacher.post("/v1/corrections", json={"items": items, "strategy": strategy})
            assert response.status_code == 200, response.text
            body = response.json()
            for item, correction in zip(items, body["corrections"]):
                assert_valid_correction(correction, item)
            assert body["cost"]["teacher_calls"] > 0 and body["cost"]["teacher_tokens"] > 0
    served = student.log_tail(200_000)
    assert "path=/v1/chat/completions status=200" in served  # the judge's prompts
    assert "path=/v1/completions status=200" in served       # verify's agent turns, as token ids
