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
from shared.tasks.expert import expert_next_step, expert_steps
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
        assert [s.code for s in steps[1:-1]] == [f"print(search({json.dumps(h['entity'])}))" for h in hops]
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
