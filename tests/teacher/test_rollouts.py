"""`POST /v1/rollouts`: the teacher solves tasks in the agent format, from scratch or after a prefix."""

import pytest
from fastapi.testclient import TestClient

from shared.agent.format import render_step
from shared.models.builtin import ensure_builtin_model
from shared.models.loading import load_tokenizer
from shared.schemas.teacher import TeacherRolloutResponse
from shared.scoring import score_answer
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps
from services.teacher.app import create_app
from tests.teacher.conftest import teacher_config


def _task(family: str, seed: int = 3) -> dict:
    return builtin_tasks(family=family, n=1, seed=seed)[0].model_dump(mode="json")


@pytest.mark.parametrize("family", ["arith", "kb"])
def test_the_expert_plays_its_gold_trajectory_in_the_sandbox(expert_client, family, score_home):
    tokenizer = load_tokenizer(ensure_builtin_model("teacher", score_home))
    tasks = builtin_tasks(family=family, n=3, seed=11)
    body = {"items": [{"task": t.model_dump(mode="json")} for t in tasks], "max_turns": 32}
    response = expert_client.post("/v1/rollouts", json=body)
    assert response.status_code == 200, response.text
    parsed = TeacherRolloutResponse.model_validate(response.json())
    assert parsed.engine == "expert" and len(parsed.episodes) == len(tasks)
    for task, episode in zip(tasks, parsed.episodes):
        assert episode.task_id == task.id  # item order
        assert episode.finished and episode.stop_reason == "final_answer" and episode.n_prefix_steps == 0
        assert score_answer(episode.final_answer, task.true_answer).correct, (episode.final_answer, task.true_answer)
        gold = expert_steps(task)
        assert [(s.kind, s.code) for s in episode.steps] == [(s.kind, s.code) for s in gold]
        # Executed, not copied: every act step but the final one printed something, none raised.
        assert all(s.observation and "Error" not in s.observation for s in episode.steps[1:-1]), episode.steps
        # No model ran, but the cost is what a model teacher would have spent writing these steps: each step's
        # canonical text and its end-of-turn token in the teacher's tokenizer, one call per step.
        written = sum(len(tokenizer.encode(render_step(s), add_special_tokens=False)) + 1 for s in gold)
        assert episode.cost.sandbox_runs == 1 and episode.cost.teacher_calls == len(gold)
        assert episode.cost.teacher_tokens == written and episode.cost.teacher_prompt_tokens > written
    assert parsed.cost.sandbox_runs == len(tasks)
    assert "token_ids" not in response.json()["episodes"][0]


@pytest.mark.parametrize("family", ["arith", "kb"])
def test_the_expert_continues_from_a_prefix(expert_client, family):
    task = builtin_tasks(family=family, n=1, seed=5)[0]
    gold = expert_steps(task)
    prefix = [s.model_dump(mode="json") for s in gold[:2]]
    prefix[1]["observation"] = "stale: observations sent in are recomputed"
    response = expert_client.post("/v1/rollouts", json={
        "items": [{"task": task.model_dump(mode="json"), "prefix_steps": prefix}], "max_turns": 32})
    assert response.status_code == 200, response.text
    [episode] = response.json()["episodes"]
    assert episode["n_prefix_steps"] == 2 and episode["finished"]
    assert score_answer(episode["final_answer"], task.true_answer).correct
    assert [s["code"] for s in episode["steps"]] == [s.code for s in gold]
    assert episode["steps"][1]["observation"] != "stale: observations sent in are recomputed"


def test_max_turns_stops_the_episode(expert_client):
    task = _task("arith")
    response = expert_client.post("/v1/rollouts", json={"items": [{"task": task}], "max_turns": 2})
    [episode] = response.json()["episodes"]
    assert len(episode["steps"]) == 2 and not episode["finished"]
    assert episode["stop_reason"] == "max_turns" and episode["final_answer"] is None


def test_rollouts_count_in_metrics(expert_client):
    expert_client.post("/v1/rollouts", json={"items": [{"task": _task("kb")}]})
    text = expert_client.get("/metrics").text
    assert 'score_teacher_total{counter="episodes",service="teacher"}' in text
    assert 'route="/v1/rollouts"' in text


@pytest.mark.parametrize("body, param", [
    ({"items": []}, "body.items"),
    ({"items": [{"task": _task("arith")}], "max_turns": 0}, "body.max_turns"),
    ({"items": [{"task": _task("arith")}], "max_turns": 33}, "body.max_turns"),
    ({"items": [{"task": _task("arith")}, {"task": {"id": "user-1", "question": "What is 2 + 2?"}}]},
     "body.items.1.task"),
    ({"items": [{"task": _task("arith"), "prefix_steps": [{"kind": "act", "code": "print(1)"}]}]}, "body.items.0"),
    ({"items": [{"task": _task("arith")}], "n": 2}, "body.n"),
])
def test_bad_rollouts_are_422_naming_the_field(expert_client, body, param):
    response = expert_client.post("/v1/rollouts", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_an_unsupported_task_is_named_in_the_message(expert_client):
    body = {"items": [{"task": {"id": "user-1", "question": "What is 2 + 2?"}}]}
    error = expert_client.post("/v1/rollouts", json=body).json()["error"]
    assert error["message"].startswith("items[0].task ('user-1')") and "built-in tasks" in error["message"]


@pytest.mark.slow
def test_the_tiny_teacher_model_returns_well_typed_episodes(score_home):
    config = teacher_config(score_home, engine="transformers", max_step_tokens=32)
    tasks = builtin_tasks(n=2, seed=13)
    gold = expert_steps(tasks[0])
    items = [{"task": tasks[0].model_dump(mode="json"), "prefix_steps": [s.model_dump(mode="json") for s in gold[:2]]},
             {"task": {"id": "user-1", "question": "What is 2 + 2?"}}]
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/rollouts", json={"items": items, "max_turns": 2})
    assert response.status_code == 200, response.text
    parsed = TeacherRolloutResponse.model_validate(response.json())
    assert parsed.engine == "transformers"
    assert [e.task_id for e in parsed.episodes] == [tasks[0].id, "user-1"]
    assert [e.n_prefix_steps for e in parsed.episodes] == [2, 0]
    for episode in parsed.episodes:
        assert episode.stop_reason in ("final_answer", "max_turns", "max_tokens")
        assert episode.finished == (episode.final_answer is not None)
        assert 1 <= episode.cost.teacher_calls <= 2 and episode.cost.teacher_tokens > 0
        assert episode.cost.teacher_prompt_tokens > 0
        assert len(episode.steps) > episode.n_prefix_steps  # the model took at least one turn
        assert episode.to_episode().task_id == episode.task_id
    assert parsed.cost.teacher_tokens == sum(e.cost.teacher_tokens for e in parsed.episodes) > 0


def test_an_unreachable_teacher_server_is_503_not_a_half_filled_response(score_home):
    from tests.service_process import free_port

    config = teacher_config(score_home, engine="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                            served_model_name="teacher-72b")
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/rollouts", json={"items": [{"task": _task("arith")}], "max_turns": 2})
    assert response.status_code == 503, response.text
    assert "teacher model failed" in response.json()["error"]["message"]
