"""The teacher's HTTP surface: bad input is 422 naming the field, auth, health/ready/metrics, OpenAPI, judgements."""

import pytest
from fastapi.testclient import TestClient

from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps
from services.teacher.app import create_app
from tests.openapi_checks import undescribed
from tests.teacher.conftest import teacher_config


def _item() -> dict:
    task = builtin_tasks(family="arith", n=1, seed=7)[0]
    return {"task": task.model_dump(), "steps": [s.model_dump() for s in expert_steps(task)]}


def _bad(**change) -> dict:
    item = _item()
    for path, value in change.items():
        target = item
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        if value is ...:
            del target[leaf]
        else:
            target[leaf] = value
    return item


@pytest.mark.parametrize("body, param", [
    ({"items": [_bad(steps=[])]}, "body.items.0.steps"),
    ({"items": [_item()], "strategy": "guess"}, "body.strategy"),
    ({"items": [_bad(task__true_answer=...)]}, "body.items.0.task.true_answer"),
    ({"items": [_bad(task__true_answer=None)]}, "body.items.0.task.true_answer"),
    ({"items": [_bad(task__true_answer=[])]}, "body.items.0.task.true_answer"),
    ({"items": []}, "body.items"),
    ({"items": [_bad(steps=[{"kind": "act", "thought": "", "code": "print(1)"}])]}, "body.items.0.steps"),
])
def test_bad_corrections_are_422_naming_the_field(expert_client, body, param):
    response = expert_client.post("/v1/corrections", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def _step_judgement(index: int, **extra) -> dict:
    item = _item()
    return {"kind": "step", "task": item["task"], "steps": item["steps"], "index": index,
            "candidate": {"kind": "act", "thought": "", "code": "print(1)"}, **extra}


@pytest.mark.parametrize("item, param", [
    (_step_judgement(99), "body.items.0.step.index"),
    (_step_judgement(-1), "body.items.0.step.index"),
    ({"kind": "answer", "prediction": "4"}, "body.items.0.answer.true_answer"),
    ({"kind": "vibes"}, "body.items.0"),
])
def test_bad_judgements_are_422_naming_the_field(expert_client, item, param):
    response = expert_client.post("/v1/judgements", json={"items": [item]})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_asking_the_expert_for_a_model_verdict_is_422(expert_client):
    item = {"kind": "answer", "prediction": "Paris", "true_answer": "paris, france", "use_teacher": True}
    response = expert_client.post("/v1/judgements", json={"items": [item]})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "body.items.0.use_teacher"


def test_answer_judgements_in_order_and_cached(expert_client):
    items = [{"kind": "answer", "prediction": "5184", "true_answer": 5184},
             {"kind": "answer", "prediction": "The Posvalland", "true_answer": ["posvalland", "PV"]},
             {"kind": "answer", "prediction": "Dulos", "true_answer": "Posvalland"},
             {"kind": "answer", "prediction": None, "true_answer": "x"},
             {"kind": "answer", "prediction": "1/2", "true_answer": "0.5"}]
    first = expert_client.post("/v1/judgements", json={"items": items}).json()["judgements"]
    assert [j["equivalent"] for j in first] == [True, True, False, False, True]
    assert [j["method"] for j in first] == ["math", "exact", "f1", "none", "math"]
    again = expert_client.post("/v1/judgements", json={"items": items[:2]}).json()["judgements"]
    assert all(j["cached"] for j in again) and [j["equivalent"] for j in again] == [True, True]


def test_step_judgements_compare_effects_after_the_same_prefix(expert_client):
    item = _item()
    steps = item["steps"]  # plan, a = s op n, b = a op n, ..., final
    same = {"kind": "step", "task": item["task"], "steps": steps, "index": 2,
            "candidate": {"kind": "act", "thought": "", "code": steps[2]["code"].replace("print(b)", "print(b + 0)")}}
    other = {**same, "candidate": {"kind": "act", "thought": "", "code": "print(a + 1)"}}
    crash = {**same, "candidate": {"kind": "act", "thought": "", "code": "print(zz)"}}
    response = expert_client.post("/v1/judgements", json={"items": [same, other, crash]})
    results = response.json()["judgements"]
    assert [r["equivalent"] for r in results] == [True, False, False]
    assert all(r["method"] == "execution" for r in results)
    assert results[0]["reference_observation"] == results[0]["candidate_observation"]
    assert "NameError" in results[2]["candidate_observation"]
    assert response.json()["cost"]["sandbox_runs"] == 6


def test_health_ready_and_metrics(expert_client):
    assert expert_client.get("/health").json() == {"status": "ok"}
    ready = expert_client.get("/ready").json()
    assert ready["status"] == "ready" and ready["engine"] == "expert"
    expert_client.post("/v1/corrections", json={"items": [_item()]})
    text = expert_client.get("/metrics").text
    assert 'score_teacher_total{counter="corrections",service="teacher"}' in text
    assert 'counter="hard"' in text and 'counter="teacher_tokens"' in text
    assert 'route="/v1/corrections"' in text


def test_every_request_and_response_field_is_described(score_home):
    seen, missing = undescribed(create_app(teacher_config(score_home)).openapi())
    assert {"CorrectionRequest", "CorrectionResponse", "Correction", "Cost", "Step", "StepJudgementItem",
            "Judgement", "TeacherRolloutRequest", "TeacherRolloutResponse", "TeacherEpisode", "RolloutItem"} <= seen
    assert not missing, missing


def test_an_unreachable_teacher_server_makes_hard_corrections_not_errors(score_home):
    from tests.service_process import free_port
    from tests.teacher.conftest import broken_items

    config = teacher_config(score_home, engine="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                            served_model_name="teacher-72b")
    items, _ = broken_items(2, seed=61)
    with TestClient(create_app(config)) as client:
        for strategy in ("verify", "judge"):
            response = client.post("/v1/corrections", json={"items": items, "strategy": strategy})
            assert response.status_code == 200, response.text
            for correction in response.json()["corrections"]:
                assert correction["hard"] and "failed" in correction["reason"], correction
