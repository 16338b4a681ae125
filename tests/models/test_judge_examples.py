"""The teacher's judge examples: observations as the sandbox prints them, and the two prompts the service sends."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from services.teacher.parsing import parse_judgement
from shared.agent import teacher_prompts as prompts
from shared.agent.execute import replay_steps
from shared.agent.format import parse_act, render_step
from shared.agent.tokens import chat_token_ids
from shared.models import builtin
from shared.models.judge_examples import Unsupported, correction_example, judge_example, observe
from shared.sandbox.sandbox import Sandbox
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import broken_trajectory, expert_steps
from shared.tasks.gold import builtin_tools


def _broken(n_per_family: int, seed: int):
    rng = random.Random(seed)
    for family in ("arith", "kb"):
        for task in builtin_tasks(family=family, split="train", n=n_per_family, seed=seed):
            steps, position, what = broken_trajectory(task, rng)
            yield task, steps, position, what


def test_observations_of_broken_trajectories_are_what_the_sandbox_prints():
    search = builtin_tools()["search"]
    kinds = set()
    for task, steps, _, what in _broken(6, seed=11):
        kinds.add(what)
        with Sandbox(tools=builtin_tools()) as sandbox:
            replayed, _ = replay_steps(steps, sandbox)
        assert [s.observation for s in observe(steps, search)] == [s.observation for s in replayed], task.question
    assert kinds == {"wrong operand", "wrong operator", "wrong final answer", "wrong entity searched"}


@pytest.mark.parametrize("code", [
    "import os\nprint(os.listdir('/'))", "print(open('/etc/passwd').read())", "a = __import__('os')",
    "print(a)", "a = 2 ** 1000", "a = 'x' * 1000000000", "print(search(x) for x in 'ab')", "exec('1')",
])
def test_observe_evaluates_only_the_experts_statement_shapes(code):
    from shared.schemas.agent import Step

    with pytest.raises(Unsupported):
        observe([Step(kind="act", thought="t", code=code)], search=lambda query: "hits")


def test_the_examples_are_the_prompts_the_service_sends_answered_as_it_reads_them(score_home):
    tokenizer = AutoTokenizer.from_pretrained(builtin.builtin_model_dir("student", score_home), local_files_only=True)
    search = builtin_tools()["search"]
    for task, steps, position, what in _broken(3, seed=12):
        broken, gold = observe(steps, search), observe(expert_steps(task), search)

        ids, mask = judge_example(tokenizer, task, broken, position, what)
        prompt = chat_token_ids(tokenizer, prompts.judge_messages(task, broken), add_generation_prompt=True)
        assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)]) and all(mask[len(prompt):])
        verdict = parse_judgement(tokenizer.decode(ids[len(prompt):], skip_special_tokens=True), len(broken))
        assert verdict.first_error_step == position and verdict.answer_correct is False

        ids, mask = correction_example(tokenizer, task, broken, position, what, gold)
        written = tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
        assert written == render_step(gold[position])
        assert parse_act(written).code.strip() == gold[position].code.strip()
