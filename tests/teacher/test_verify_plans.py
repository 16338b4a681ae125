"""`verify` and plans: the plan is the first critical error only when no act step's correction reaches the gold
answer, the teacher's own plan differs, and the teacher reaches the gold answer from it (the scripted expert as
the teacher, through the service)."""

from __future__ import annotations

import random

from shared.schemas.agent import Step, Task
from shared.scoring import score_answer
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import broken_trajectory, expert_steps
from tests.teacher.checks import expert_finishes

WRONG_PLAN = Step(kind="plan", thought="I will guess the answer without computing anything.")


def _item(task, steps: list[Step]) -> dict:
    return {"task": task.model_dump(mode="json"), "steps": [s.model_dump(mode="json") for s in steps]}


def _verify(client, items: list[dict]) -> list[dict]:
    response = client.post("/v1/corrections", json={"items": items, "strategy": "verify"})
    assert response.status_code == 200, response.text
    return response.json()["corrections"]


def test_a_wrong_plan_with_nothing_after_it_is_corrected_at_step_0(expert_client):
    tasks = builtin_tasks(n=6, seed=21)
    corrections = _verify(expert_client, [_item(task, [WRONG_PLAN]) for task in tasks])
    for task, correction in zip(tasks, corrections):
        assert not correction["hard"] and correction["first_error_step"] == 0, correction
        plan = Step.model_validate(correction["corrected_step"])
        assert plan.kind == "plan" and plan.thought == expert_steps(task)[0].thought
        assert score_answer(expert_finishes(Task.model_validate(task.model_dump()), [plan]), task.true_answer).correct
        assert correction["cost"]["full_rollouts"] == 1 and "plan is the first critical error" in correction["analysis"]


def test_the_teachers_own_plan_is_not_an_error(expert_client):
    tasks = builtin_tasks(n=4, seed=22)
    corrections = _verify(expert_client, [_item(task, expert_steps(task)[:1]) for task in tasks])
    for correction in corrections:
        assert correction["hard"] and correction["first_error_step"] is None, correction
        assert "no step differs in effect" in correction["reason"]


def test_an_act_step_the_teacher_can_fix_wins_over_a_wrong_plan(expert_client):
    rng = random.Random(23)
    items, positions = [], []
    for task in builtin_tasks(n=10, seed=23):
        steps, position, _ = broken_trajectory(task, rng)
        items.append(_item(task, [WRONG_PLAN, *steps[1:]]))
        positions.append(position)
    corrections = _verify(expert_client, items)
    assert [c["first_error_step"] for c in corrections] == positions
