"""Render episodes to chat messages and parse a model's turn into a Step.

The parser never raises on model output: a malformed turn becomes a Step with
`parse_error` set and an observation that tells the model what to fix, so a
rollout always has a well-defined next state.
"""

from __future__ import annotations

import re

from shared.agent.prompts import (
    AFTER_PLAN,
    CODE_CLOSE,
    CODE_OPEN,
    OBSERVATION_PREFIX,
    PLAN_CLOSE,
    PLAN_OPEN,
    SYSTEM_PROMPT,
    THOUGHT_CLOSE,
    THOUGHT_OPEN,
)
from shared.schemas.agent import Step, Task

FORMAT_REMINDER = f"Write {THOUGHT_OPEN}...{THOUGHT_CLOSE} followed by {CODE_OPEN}...{CODE_CLOSE}."
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)
_SPECIAL = re.compile(r"<\|[a-z_]+\|>")


def render_step(step: Step) -> str:
    """The canonical assistant text of a step (what SFT trains on)."""
    if step.kind == "plan":
        return f"{PLAN_OPEN}{step.thought}{PLAN_CLOSE}"
    return f"{THOUGHT_OPEN}{step.thought}{THOUGHT_CLOSE}\n{CODE_OPEN}\n{step.code or ''}\n{CODE_CLOSE}"


def tool_turn(step: Step) -> str | None:
    """The user turn that follows a step: the plan acknowledgement or the observation (None if not run yet)."""
    if step.kind == "plan":
        return AFTER_PLAN
    if step.observation is None:
        return None
    return OBSERVATION_PREFIX + step.observation


def episode_messages(task: Task, steps: list[Step], *, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Chat messages for a task and the steps so far: system, task, then assistant/user pairs."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": task.question}]
    for step in steps:
        messages.append({"role": "assistant", "content": render_step(step)})
        follow_up = tool_turn(step)
        if follow_up is not None:
            messages.append({"role": "user", "content": follow_up})
    return messages


def _between(text: str, open_tag: str, close_tag: str) -> tuple[str | None, bool]:
    """Content after `open_tag` up to `close_tag`; (None, False) if absent, (rest, False) if unclosed."""
    start = text.find(open_tag)
    if start < 0:
        return None, False
    start += len(open_tag)
    end = text.find(close_tag, start)
    if end < 0:
        return text[start:], False
    return text[start:end], True


def _clean(text: str) -> str:
    return _SPECIAL.sub("", text).strip()


def parse_plan(raw: str) -> Step:
    """Parse the first turn. A plan never fails: without tags the whole text is the plan."""
    text = _clean(raw)
    content, closed = _between(text, PLAN_OPEN, PLAN_CLOSE)
    if content is None:
        # Models that skip the plan often open with a thought; keep its text as the plan.
        return Step(kind="plan", thought=_strip_tags(text), raw=raw, parse_error=f"missing {PLAN_OPEN} tag")
    error = None if closed else f"unclosed {PLAN_OPEN} (output truncated?)"
    return Step(kind="plan", thought=content.strip(), raw=raw, parse_error=error)


def _strip_tags(text: str) -> str:
    return re.sub(r"</?(first_thought|thought|code)>", "", text).strip()


def _extract_code(text: str) -> tuple[str | None, str | None]:
    """(code, error). Accepts `<code>` blocks, and markdown fences when the tags are missing."""
    code, closed = _between(text, CODE_OPEN, CODE_CLOSE)
    if code is not None:
        if not closed:
            return None, f"unclosed {CODE_OPEN} block (output truncated?)"
        fenced = _FENCE.search(code)
        code = fenced.group(1) if fenced else code
        code = code.strip("\n").rstrip()
        return (code, None) if code.strip() else (None, f"empty {CODE_OPEN} block")
    fenced = _FENCE.search(text)
    if fenced and fenced.group(1).strip():
        return fenced.group(1).strip("\n").rstrip(), None
    return None, f"no {CODE_OPEN} block"


def parse_act(raw: str) -> Step:
    """Parse a later turn into an `act` step; malformed turns get `parse_error` and an explanatory observation."""
    text = _clean(raw)
    thought, _ = _between(text, THOUGHT_OPEN, THOUGHT_CLOSE)
    if thought is None:
        # Prose before the code block is the thought when the tag is missing.
        head = text.split(CODE_OPEN, 1)[0].split("```", 1)[0]
        thought = _strip_tags(head)
    thought = thought.split(CODE_OPEN, 1)[0].strip()
    code, error = _extract_code(text)
    if error is not None:
        return Step(
            kind="act", thought=thought, code=None, raw=raw, parse_error=error,
            observation=format_error_observation(error),
        )
    return Step(kind="act", thought=thought, code=code, raw=raw)


def format_error_observation(error: str) -> str:
    return f"Error: the last turn could not be run: {error}. {FORMAT_REMINDER}"


def parse_turn(raw: str, *, is_first: bool) -> Step:
    """Parse one model turn: the first turn of an episode is the plan, every later one an action."""
    return parse_plan(raw) if is_first else parse_act(raw)
