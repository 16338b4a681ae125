"""The agent format: canonical rendering and a parser that never raises on model output."""

import pytest

from shared.agent.format import episode_messages, parse_act, parse_plan, parse_turn, render_step
from shared.agent.prompts import AFTER_PLAN, OBSERVATION_PREFIX, SYSTEM_PROMPT
from shared.schemas.agent import Step, Task

TASK = Task(id="t1", question="Compute 2 + 3.", true_answer=5)


def test_render_round_trips_through_the_parser():
    plan = Step(kind="plan", thought="Add the numbers.")
    act = Step(kind="act", thought="Add.", code="a = 2 + 3\nprint(a)")
    assert parse_plan(render_step(plan)).thought == plan.thought
    parsed = parse_act(render_step(act))
    assert (parsed.thought, parsed.code, parsed.parse_error) == (act.thought, act.code, None)


def test_episode_messages_alternate_roles_and_carry_observations():
    steps = [
        Step(kind="plan", thought="p"),
        Step(kind="act", thought="t", code="print(5)", observation="5"),
        Step(kind="act", thought="t2", code="final_answer_print(5)"),  # not run yet: no user turn after it
    ]
    messages = episode_messages(TASK, steps)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert messages[3]["content"] == AFTER_PLAN
    assert messages[5]["content"] == OBSERVATION_PREFIX + "5"


# (raw model output, expected code or None, expected error substring or None)
ACT_CORPUS = [
    ("<thought>ok</thought>\n<code>\nprint(1)\n</code>", "print(1)", None),
    ("<thought>ok</thought><code>print(1)</code><|im_end|>", "print(1)", None),
    ("Some prose first. <thought>ok</thought> more prose <code>x=1\nprint(x)</code> trailing", "x=1\nprint(x)", None),
    ("<thought>ok</thought>\n<code>\n```python\nprint(2)\n```\n</code>", "print(2)", None),
    ("I will compute it.\n```python\nprint(3)\n```", "print(3)", None),
    ("<code>print(4)</code>", "print(4)", None),
    ("<thought>no code here</thought>", None, "no <code> block"),
    ("<thought>ok</thought>\n<code>\nprint(1", None, "unclosed <code>"),
    ("<thought>ok</thought><code>   </code>", None, "empty <code>"),
    ("", None, "no <code> block"),
    ("<thought>unclosed thought <code>print(5)</code>", "print(5)", None),
    ("\x00\xff<thought>\u2603</thought><code>print('\u2603')</code>", "print('\u2603')", None),
    ("</code><code>", None, "unclosed <code>"),
    ("<first_thought>a plan in the wrong turn</first_thought>", None, "no <code> block"),
]


@pytest.mark.parametrize("raw,code,error", ACT_CORPUS)
def test_act_parser_corpus(raw, code, error):
    step = parse_act(raw)
    assert step.kind == "act"
    assert step.raw == raw
    assert step.code == code
    if error is None:
        assert step.parse_error is None and step.observation is None
    else:
        assert error in step.parse_error
        assert step.observation.startswith("Error: the last turn could not be run")
        assert "<thought>" in step.observation  # it tells the model what to write instead


@pytest.mark.parametrize(
    "raw,thought,error",
    [
        ("<first_thought>Search, then answer.</first_thought>", "Search, then answer.", None),
        ("<first_thought>Truncated plan", "Truncated plan", "unclosed"),
        ("Just prose.", "Just prose.", "missing"),
        ("<thought>acting early</thought><code>print(1)</code>", "acting earlyprint(1)", "missing"),
        ("", "", "missing"),
    ],
)
def test_plan_parser_never_fails(raw, thought, error):
    step = parse_turn(raw, is_first=True)
    assert step.kind == "plan" and step.code is None and step.thought == thought
    assert (step.parse_error is None) if error is None else (error in step.parse_error)


def test_parser_never_raises_on_arbitrary_text():
    import random

    rng = random.Random(0)
    alphabet = ["<thought>", "</thought>", "<code>", "</code>", "```", "python\n", "print(1)", "\n", " ", "x", "<|im_end|>"]
    for _ in range(500):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        for first in (True, False):
            step = parse_turn(raw, is_first=first)
            assert step.kind in ("plan", "act")
            assert step.code is None or step.code.strip()
