"""The scripted expert: its trajectories run, reach the gold answer, and learn only from observations."""

from __future__ import annotations

import contextlib
import io
import json
import operator
import re

import pytest

from shared.schemas.agent import Step, Task
from shared.scoring import score_answer
from shared.tasks import kb
from shared.tasks.builtin import builtin_search_backend, builtin_tasks
from shared.tasks.expert import broken_trajectory, expert_next_step, expert_progress, expert_steps
from shared.tools.search import make_search_tool


class _Final(Exception):
    """Raised by the test's final_answer_print so the run stops where a real episode would."""


def _run(steps: list[Step]) -> tuple[list[str], str | None]:
    """Execute the act steps in one namespace (a stand-in for the sandbox): their outputs and the final answer."""
    answers: list[str] = []

    def final_answer_print(x):
        answers.append(str(x))
        print(x)

    namespace = {"search": make_search_tool(builtin_search_backend()), "final_answer_print": final_answer_print}
    outputs = []
    for step in steps:
        if step.kind == "plan":
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(step.code, namespace)
        outputs.append(buffer.getvalue().strip())
    return outputs, (answers[-1] if answers else None)


def _sample(family: str, n: int) -> list[Task]:
    train = builtin_tasks(family=family, split="train", n=n, seed=21)
    return train + builtin_tasks(family=family, split="eval", n=n // 4, seed=21)


def _chain_result(meta: dict) -> int:
    functions = {"+": operator.add, "-": operator.sub, "*": operator.mul}
    value = meta["start"]
    for symbol, operand in meta["ops"]:
        value = functions[symbol](value, operand)
    return value


def _world_answer(meta: dict) -> str:
    w, anchor = kb.world(), meta["hops"][0]["entity"]
    if meta["kind"] == "birth_country":
        return w.cities[w.people[anchor].birth_city].country
    if meta["kind"] == "hq_country":
        return w.cities[w.companies[w.people[anchor].company].hq_city].country
    city = w.people[w.companies[anchor].founder].birth_city
    return city if meta["kind"] == "founder_birth_city" else w.cities[city].country


def test_trajectory_shape():
    for task in _sample("arith", 40) + _sample("kb", 40):
        steps = expert_steps(task)
        assert steps[0].kind == "plan" and steps[0].code is None and steps[0].thought
        assert all(s.kind == "act" and s.code and s.thought and s.observation is None for s in steps[1:])
        assert steps[-1].code.startswith("final_answer_print(")
        assert sum("final_answer_print" in s.code for s in steps[1:]) == 1


def test_arith_expert_reaches_the_chain_result():
    for task in _sample("arith", 200):
        steps = expert_steps(task)
        outputs, final = _run(steps)
        assert len(steps) == len(task.meta["ops"]) + 2  # plan, one step per operation, final answer
        assert int(final) == _chain_result(task.meta)
        assert score_answer(final, task.true_answer).correct


def test_arith_thoughts_read_the_previous_observation():
    for task in builtin_tasks(family="arith", n=20, seed=8):
        steps = expert_steps(task)
        outputs, _ = _run(steps)
        for previous_output, step in zip(outputs, steps[2:]):
            assert re.match(rf"That gives {re.escape(previous_output)}[.,]", step.thought)


def test_arith_step_code_is_one_operation_each():
    task = Task(id="t", question="q", true_answer=4775, family="arith",
                meta={"start": 347, "ops": [["+", 85], ["*", 12], ["-", 409]]})
    codes = [s.code for s in expert_steps(task)[1:]]
    assert codes == ["a = 347 + 85\nprint(a)", "b = a * 12\nprint(b)", "c = b - 409\nprint(c)", "final_answer_print(c)"]


def test_kb_expert_reaches_the_answer_the_world_implies():
    for task in _sample("kb", 200):
        _, final = _run(expert_steps(task))
        assert final == _world_answer(task.meta)
        assert score_answer(final, task.true_answer).correct


def test_kb_expert_searches_once_per_hop_and_learns_each_name_from_an_observation():
    for task in _sample("kb", 100):
        steps = expert_steps(task)
        hops = task.meta["hops"]
        assert [s.code for s in steps[1:-1]] == [f"print(search({json.dumps(' ' + h['entity'])}))" for h in hops]
        outputs, final = _run(steps)
        # Each searched name after the first, and the answer, come from the previous search's output,
        # never from the question: the answer is reachable only through search.
        for hop, output in zip(hops, outputs):
            assert hop["value"] in output and hop["value"] not in task.question
        for step, hop in zip(steps[2:], hops):
            assert hop["value"] in step.thought  # the thought names what was learnt
        assert final not in steps[0].thought and final not in task.question


def test_next_step_follows_the_trajectory_and_stops_at_its_end():
    for task in builtin_tasks(n=6, seed=2):
        steps = expert_steps(task)
        for i in range(len(steps)):
            assert expert_next_step(task, steps[:i]) == steps[i]
        with pytest.raises(ValueError, match="nothing to add"):
            expert_next_step(task, steps)


def test_tasks_read_back_from_json_still_have_an_expert():
    for task in builtin_tasks(n=4, seed=0):
        again = Task.model_validate(json.loads(task.model_dump_json()))
        assert expert_steps(again) == expert_steps(task)


def test_a_task_without_a_builtin_spec_is_refused():
    with pytest.raises(ValueError, match="not a built-in task"):
        expert_steps(Task(id="user-1", question="What is 2 + 2?", true_answer=4))


# ---- the state-aware expert: continues from what a prefix's observations established ----------------------

_ARITH = Task(id="t", question="q", true_answer=4775, family="arith",
              meta={"start": 347, "ops": [["+", 85], ["*", 12], ["-", 409]]})


def _act(code: str, observation: str | None) -> Step:
    return Step(kind="act", thought="", code=code, observation=observation)


def _plan() -> Step:
    return expert_steps(_ARITH)[0]


def test_arith_expert_continues_from_values_printed_under_other_names():
    prefix = [_plan(), _act("x = 347 + 85\nprint(x)", "432")]
    step = expert_next_step(_ARITH, prefix)
    assert step.code == "b = 432 * 12\nprint(b)"  # literal values: never relies on the prefix's variable names
    assert "432" in step.thought and "multiply by 12" in step.thought


def test_arith_expert_ignores_failed_and_wrong_steps_and_repeats():
    prefix = [_plan(), _act("x = 347 + 85\nprint(x)", "432"), _act("print(x)", "432"),
              _act("y = x * 13\nprint(y)", "5616"), _act("print(z)", "Error: NameError: name 'z' is not defined (line 1)")]
    assert expert_next_step(_ARITH, prefix).code == "b = 432 * 12\nprint(b)"
    assert expert_progress(_ARITH, prefix) == 0


def test_arith_expert_starts_from_the_question_and_ends_with_the_last_value():
    assert expert_next_step(_ARITH, [_plan(), _act("print('hi')", "hi")]).code == "a = 347 + 85\nprint(a)"
    done = [_plan(), _act("print(347 + 85)", "432"), _act("print(432 * 12)", "5184"), _act("print(5184 - 409)", "4775")]
    assert expert_next_step(_ARITH, done).code == "final_answer_print(4775)"


def test_kb_expert_counts_only_hops_a_search_resolved():
    task = builtin_tasks(family="kb", n=1, seed=4)[0]
    hops = task.meta["hops"]
    search = make_search_tool(builtin_search_backend())
    plan = expert_steps(task)[0]
    # A paraphrased query whose top hit is the entity resolves the hop; the next step searches the next entity.
    query = f"who is {hops[0]['entity']}"
    resolved = [plan, _act(f"print(search({json.dumps(query)}))", search(query))]
    assert expert_progress(task, resolved) == 0
    assert expert_next_step(task, resolved).code == f"print(search({json.dumps(' ' + hops[1]['entity'])}))"
    # A search for something else resolves nothing: the expert searches the first entity again.
    wrong = [plan, _act('print(search("Posvalland"))', search("Posvalland"))]
    assert expert_progress(task, wrong) == -1
    assert expert_next_step(task, wrong).code == f"print(search({json.dumps(' ' + hops[0]['entity'])}))"


def test_broken_trajectories_break_exactly_one_step_and_end_wrong():
    import random

    rng = random.Random(5)
    for task in builtin_tasks(n=60, seed=5):
        gold = expert_steps(task)
        steps, position, what = broken_trajectory(task, rng)
        assert steps[:position] == gold[:position] and steps[position] != gold[position] and what
        _, final = _run(steps)
        assert final is None or not score_answer(final, task.true_answer).correct
