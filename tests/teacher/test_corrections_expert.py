"""`POST /v1/corrections` with the scripted expert: both strategies find deliberately broken steps."""

from fastapi.testclient import TestClient

from services.teacher.app import create_app
from shared.schemas.agent import Step, Task
from shared.scoring import score_answer
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps
from tests.teacher.checks import expert_finishes
from tests.teacher.conftest import broken_items, teacher_config

N_BROKEN = 40  # 20 per family; the bench runs 200


def test_verify_finds_the_broken_step_and_its_correction_reaches_the_gold_answer(expert_client):
    items, positions = broken_items(N_BROKEN, seed=11)
    response = expert_client.post("/v1/corrections", json={"items": items, "strategy": "verify"})
    assert response.status_code == 200, response.text
    body = response.json()
    corrections = body["corrections"]
    assert [c["task_id"] for c in corrections] == [item["task"]["id"] for item in items]  # item order
    found = sum(c["first_error_step"] == p for c, p in zip(corrections, positions))
    assert found / len(items) >= 0.95
    for item, correction in zip(items, corrections):
        if correction["hard"]:
            continue
        task = Task.model_validate(item["task"])
        k = correction["first_error_step"]
        corrected = Step.model_validate(correction["corrected_step"])
        assert corrected.observation, "the corrected step carries its observation"
        prefix = [Step.model_validate(s) for s in item["steps"][:k]]
        assert score_answer(expert_finishes(task, [*prefix, corrected]), task.true_answer).correct
    # Full rollouts run only from divergent prefixes, earliest first: one per correction here.
    assert body["cost"]["full_rollouts"] / len(items) <= 1.5
    assert body["cost"]["full_rollouts"] == sum(c["cost"]["full_rollouts"] for c in corrections)
    # The expert counts what a model teacher would spend: proposals at every act prefix, and the full
    # rollouts' share itemised within the totals.
    # (A rollout after a corrected final-answer step writes nothing more.)
    for c in corrections:
        cost = c["cost"]
        assert cost["teacher_tokens"] > cost["rollout_tokens"] >= 0 and cost["judge_tokens"] == 0
        assert cost["teacher_prompt_tokens"] > cost["rollout_prompt_tokens"] >= 0
    assert sum(c["cost"]["rollout_tokens"] for c in corrections) > 0


def test_verify_sees_through_code_written_differently(expert_client):
    # Every step is written unlike the expert's (other variable names, search results stored first): the
    # teacher's steps are executed after each prefix and compared by observation, not by code.
    items, positions = broken_items(20, seed=13, restyle=True)
    body = expert_client.post("/v1/corrections", json={"items": items, "strategy": "verify"}).json()
    found = sum(c["first_error_step"] == p for c, p in zip(body["corrections"], positions))
    assert found / len(items) >= 0.95
    assert body["cost"]["full_rollouts"] / len(items) <= 1.5
    assert body["cost"]["sandbox_runs"] > 3 * len(items)  # the comparisons really ran


def test_judge_with_the_expert_finds_the_same_steps(expert_client):
    items, positions = broken_items(N_BROKEN, seed=12)
    response = expert_client.post("/v1/corrections", json={"items": items, "strategy": "judge"})
    corrections = response.json()["corrections"]
    assert sum(c["first_error_step"] == p for c, p in zip(corrections, positions)) / len(items) >= 0.95
    assert all(c["cost"]["full_rollouts"] == 0 for c in corrections)  # the judge never rolls out
    # The verdict's would-be tokens count as judgement; the corrected step's as the rest.
    assert all(c["cost"]["teacher_tokens"] > c["cost"]["judge_tokens"] > 0 and c["cost"]["rollout_tokens"] == 0
               for c in corrections if not c["hard"])
    assert all(c["corrected_step"]["observation"] for c in corrections if not c["hard"])


def _arith_task() -> Task:
    return Task(id="t", question="Start with 347. Add 85, multiply by 12, then subtract 409. What is the result?",
                true_answer=4775, family="arith", meta={"start": 347, "ops": [["+", 85], ["*", 12], ["-", 409]]})


def _act(code: str) -> dict:
    return {"kind": "act", "thought": "", "code": code}


def _correct(client, task: Task, steps: list[dict], strategy: str) -> dict:
    body = {"items": [{"task": task.model_dump(), "steps": steps}], "strategy": strategy}
    return client.post("/v1/corrections", json=body).json()["corrections"][0]


def test_steps_with_the_teachers_effect_are_never_errors_however_written(expert_client):
    task = _arith_task()
    plan = expert_steps(task)[0].model_dump()
    steps = [plan, _act("x = 347 + 85\nprint(x)"), _act("y = x * 12\nprint(y)"),  # renamed: same effects
             _act("z = y + 409\nprint(z)"), _act("final_answer_print(z)")]
    for strategy in ("verify", "judge"):
        fixed = _correct(expert_client, task, steps, strategy)
        assert fixed["first_error_step"] == 3 and not fixed["hard"]
        assert fixed["corrected_step"]["code"] == "c = 5184 - 409\nprint(c)"  # literal values, from the observations
        assert fixed["corrected_step"]["observation"] == "4775"


def test_a_step_that_establishes_nothing_new_is_the_first_error(expert_client):
    task = _arith_task()
    steps = [expert_steps(task)[0].model_dump(), _act("x = 347 + 85\nprint(x)"), _act("print(x)"),
             _act("y = x * 12\nprint(y)"), _act("final_answer_print(y)")]
    # verify: the repeat's effect differs from the teacher's step there, and the teacher's step leads to the
    # gold answer; judge (expert): the repeat does not advance the chain.
    for strategy in ("verify", "judge"):
        assert _correct(expert_client, task, steps, strategy)["first_error_step"] == 2


def test_a_trajectory_that_reaches_the_gold_answer_has_nothing_to_correct(expert_client):
    task = builtin_tasks(family="kb", n=1, seed=3)[0]
    item = {"task": task.model_dump(), "steps": [s.model_dump() for s in expert_steps(task)]}
    for strategy in ("verify", "judge"):
        body = {"items": [item], "strategy": strategy}
        [correction] = expert_client.post("/v1/corrections", json=body).json()["corrections"]
        assert correction["answer_correct"] and not correction["hard"] and correction["first_error_step"] is None


def test_a_task_outside_the_builtin_suite_is_hard_for_the_expert(expert_client):
    item = {"task": {"id": "user-1", "question": "What is 2 + 2?", "true_answer": 4},
            "steps": [{"kind": "plan", "thought": "add"}, _act("final_answer_print(5)")]}
    [correction] = expert_client.post("/v1/corrections", json={"items": [item]}).json()["corrections"]
    assert correction["hard"] and "only built-in tasks" in correction["reason"]


def test_a_step_whose_code_crashed_is_replaced(expert_client):
    task = _arith_task()
    steps = [expert_steps(task)[0].model_dump(), _act("a = 347 + 85\nprint(a)"), _act("b = a * twelve\nprint(b)"),
             _act("final_answer_print(0)")]
    [fixed] = expert_client.post("/v1/corrections", json={"items": [{"task": task.model_dump(), "steps": steps}]}
                                 ).json()["corrections"]
    assert fixed["first_error_step"] == 2
    assert fixed["corrected_step"]["observation"] == "5184"


def test_verify_window_changes_the_spend_never_the_correction(score_home):
    # Proposals are asked for prefix by prefix (window 1) or all at once (window 0): the same steps are found and
    # corrected, and prefixes after the first error are paid for only when they are proposed.
    items, positions = broken_items(12, seed=23)
    bodies = {}
    for window in (0, 1):
        with TestClient(create_app(teacher_config(score_home, verify_window=window))) as client:
            response = client.post("/v1/corrections", json={"items": items, "strategy": "verify"})
        assert response.status_code == 200, response.text
        bodies[window] = response.json()["corrections"]
    for item, position, everything, windowed in zip(items, positions, bodies[0], bodies[1]):
        for field in ("first_error_step", "corrected_step", "hard", "answer_correct"):
            assert windowed[field] == everything[field], field
        assert windowed["cost"]["full_rollouts"] == everything["cost"]["full_rollouts"]
        acts_after = sum(1 for step in item["steps"][position + 1:] if step["kind"] == "act")
        if acts_after:  # window 1 never proposed at the act steps after the error
            assert windowed["cost"]["teacher_prompt_tokens"] < everything["cost"]["teacher_prompt_tokens"]
        else:
            assert windowed["cost"]["teacher_tokens"] == everything["cost"]["teacher_tokens"]
