"""The teacher with a real model in-process (the built-in tiny teacher): both strategies answer validly.

The tiny model writes what it writes; the contract is that every correction is either a usable, executed
repair or `hard` with a reason, and that the model's cost is accounted.
"""

import pytest
from fastapi.testclient import TestClient

from services.teacher.app import create_app
from tests.teacher.checks import assert_valid_correction
from tests.teacher.conftest import broken_items, teacher_config

pytestmark = pytest.mark.slow

SMALL = dict(max_step_tokens=32, max_judge_tokens=48, rollout_max_turns=2, judge_attempts=2, max_rollouts_per_item=2)


@pytest.fixture(scope="module")
def model_client(score_home):
    with TestClient(create_app(teacher_config(score_home, engine="transformers", **SMALL))) as client:
        yield client


@pytest.mark.parametrize("strategy", ["verify", "judge"])
def test_corrections_from_the_tiny_teacher_are_valid(model_client, strategy):
    items, _ = broken_items(2, seed=41)
    response = model_client.post("/v1/corrections", json={"items": items, "strategy": strategy})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["engine"] == "transformers"
    for item, correction in zip(items, body["corrections"]):
        assert_valid_correction(correction, item)
    assert body["cost"]["teacher_calls"] > 0 and body["cost"]["teacher_tokens"] > 0
    assert body["cost"]["teacher_prompt_tokens"] > body["cost"]["teacher_calls"]


def test_model_verdicts_on_answers_and_steps(model_client):
    items, _ = broken_items(1, seed=42)
    item = items[0]
    answer = {"kind": "answer", "prediction": "forty-two", "true_answer": "42", "question": "6 * 7?", "use_teacher": True}
    step = {"kind": "step", "task": item["task"], "steps": item["steps"], "index": 1,
            "candidate": {"kind": "act", "thought": "", "code": "print(7)"}, "use_teacher": True}
    response = model_client.post("/v1/judgements", json={"items": [answer, step]})
    assert response.status_code == 200, response.text
    for judgement in response.json()["judgements"]:
        # Either the model's verdict, or (when its reply held none) the programmatic one saying so.
        assert judgement["method"] == "teacher" or "programmatic verdict" in judgement["detail"]
    assert response.json()["judgements"][1]["candidate_observation"] == "7"
