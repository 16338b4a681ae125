"""The judge strategy's handling of model output: retries, plan verdicts, leaked answers, fallback to hard.

The teacher model here is scripted (its replies are fixed strings, like a recorded model), so each path of
the strategy is exercised exactly; the prompts it receives are checked too. Real models answer the same
strategy in `test_model_backends.py` and `test_e2e_process.py`.
"""

import asyncio
from functools import partial

from shared.sandbox.sandbox import Sandbox
from shared.schemas.teacher import CorrectionItem, Cost
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import broken_trajectory, expert_steps
from shared.tasks.gold import builtin_tools
from services.teacher.backends import BackendError, ChatReply, TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor
from services.teacher.judge import JudgeStrategy
from services.teacher.prepare import prepare


class RecordedModel(TeacherBackend):
    """Answers chat prompts with the given replies in order; records the prompts."""

    kind = "recorded"

    def __init__(self, replies: list) -> None:
        self.replies = list(replies)
        self.prompts: list[list[dict]] = []
        self.temperatures: list[float | None] = []

    async def chat(self, messages, *, max_tokens, json_schema=None, seed=None, temperature=None) -> ChatReply:
        self.prompts.append(messages)
        self.temperatures.append(temperature)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return ChatReply(reply, Cost(teacher_calls=1, teacher_tokens=len(reply.split()), teacher_prompt_tokens=10))

    async def propose(self, jobs):
        raise AssertionError("the judge strategy never asks for proposals")

    async def continue_from(self, task, steps, *, max_turns):
        raise AssertionError("the judge strategy never rolls out")


def _arith_case():
    import random

    task = builtin_tasks(family="arith", n=1, seed=31)[0]
    steps, position, _ = broken_trajectory(task, random.Random(1))
    return task, steps, position


def _judge(replies, task, steps, attempts=3):
    model = RecordedModel(replies)

    async def run():
        executor = Executor(partial(Sandbox, tools=builtin_tools()), limit=2)
        prepared = await prepare([CorrectionItem(task=task.model_dump(), steps=steps)], executor)
        return await JudgeStrategy(model, executor, TeacherConfig(judge_attempts=attempts)).correct(prepared)

    [correction] = asyncio.run(run())
    return correction, model


def test_a_clean_verdict_and_step_make_an_executed_correction():
    task, steps, k = _arith_case()
    gold = expert_steps(task)[k]
    verdict = f'{{"answer_correct": false, "first_error_step": {k + 1}, "analysis": "wrong number", "suggestion": "fix"}}'
    step = f"<thought>{gold.thought}</thought>\n<code>\n{gold.code}\n</code>"
    correction, model = _judge([verdict, step], task, steps)
    assert correction.first_error_step == k and not correction.hard
    assert correction.corrected_step.code == gold.code and correction.corrected_step.observation
    assert correction.cost.teacher_calls == 2
    judge_prompt, step_prompt = (m[-1]["content"] for m in model.prompts)
    gold_answer = str(task.true_answer)
    assert gold_answer in judge_prompt and f"Step {k + 1}:" in judge_prompt  # numbered from 1
    assert gold_answer not in step_prompt  # prompt 2 sees the prefix, the faulty step and the analysis only
    assert "meta" not in judge_prompt and str(task.meta["ops"]) not in judge_prompt


def test_unreadable_verdicts_are_retried_then_hard():
    task, steps, k = _arith_case()
    good = f'Sure.\n```json\n{{"first_error_step": "{k + 1}", "analysis": "a",}}\n```'
    step = "<thought>t</thought><code>print(1)</code>"
    correction, model = _judge(["I am not sure.", good, step], task, steps)
    assert correction.first_error_step == k and correction.cost.teacher_calls == 3
    assert model.temperatures == [None, 0.7, None]  # greedy first; the retry samples, or it would repeat itself
    hard, _ = _judge(["nope", '{"first_error_step": 99}', '{"answer_correct": false'], task, steps)
    assert hard.hard and "no usable verdict after 3 attempts" in hard.reason and hard.first_error_step is None


def test_a_verdict_naming_the_plan_moves_to_the_first_act_step():
    task, steps, _ = _arith_case()
    correction, _ = _judge(['{"first_error_step": 1, "analysis": "bad plan"}', "<thought>t</thought><code>print(2)</code>"],
                           task, steps)
    assert correction.first_error_step == 1


def test_a_verdict_of_no_error_on_a_wrong_answer_is_retried():
    task, steps, k = _arith_case()
    replies = ['{"answer_correct": true, "first_error_step": null}', f'{{"first_error_step": {k + 1}}}',
               "<thought>t</thought><code>print(3)</code>"]
    correction, _ = _judge(replies, task, steps)
    assert correction.first_error_step == k and not correction.hard


def test_a_corrected_step_that_gives_the_answer_away_is_regenerated_then_hard():
    task, steps, k = _arith_case()
    verdict = f'{{"first_error_step": {k + 1}, "analysis": "a", "suggestion": "s"}}'
    leak = f"<thought>The answer is {task.true_answer}.</thought><code>final_answer_print({task.true_answer})</code>"
    fine = "<thought>Recompute.</thought><code>print(1)</code>"
    regenerated, _ = _judge([verdict, leak, fine], task, steps)
    assert not regenerated.hard and regenerated.corrected_step.code == "print(1)"
    hard, _ = _judge([verdict, leak, leak, "no tags at all"], task, steps)
    assert hard.hard and "malformed" in hard.reason
    hard, _ = _judge([verdict, leak, leak, leak], task, steps)
    assert hard.hard and "gold answer" in hard.reason and hard.analysis == "a"


def test_a_failing_teacher_model_is_hard_not_an_error():
    task, steps, _ = _arith_case()
    correction, _ = _judge([BackendError("HTTP 503")], task, steps)
    assert correction.hard and "HTTP 503" in correction.reason
