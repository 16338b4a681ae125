"""The teacher's prompts, all in one place: the judge, the corrected step, and the two equivalence verdicts.

Only a task's question and (where judging needs it) its gold answer reach a prompt; a built-in task's
`meta` (the expert's solution) never does. Steps are numbered from 1 here, as a reader would count them.
"""

from __future__ import annotations

from shared.agent.prompts import SYSTEM_PROMPT
from shared.schemas.agent import Step, Task

MAX_OBSERVATION_CHARS = 600

JUDGE_SYSTEM = (
    "You review an agent's attempt at a task. The agent writes a plan, then steps of thought and Python code; "
    "each step's output is its observation. You reply with JSON only."
)

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "answer_correct": {"type": "boolean"},
        "first_error_step": {"type": ["integer", "null"]},
        "analysis": {"type": "string"},
        "suggestion": {"type": "string"},
    },
    "required": ["answer_correct", "first_error_step", "analysis", "suggestion"],
}

EQUIVALENCE_SCHEMA = {
    "type": "object",
    "properties": {"equivalent": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["equivalent", "reason"],
}


def _clip(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= MAX_OBSERVATION_CHARS else text[:MAX_OBSERVATION_CHARS] + " [...]"


def render_numbered(steps: list[Step], start: int = 1) -> str:
    blocks = []
    for number, step in enumerate(steps, start=start):
        if step.kind == "plan":
            blocks.append(f"Step {number} (plan): {step.thought.strip()}")
            continue
        blocks.append(f"Step {number}:\nThought: {step.thought.strip()}\nCode:\n{(step.code or '').strip()}\n"
                      f"Observation: {_clip(step.observation)}")
    return "\n\n".join(blocks)


def gold_text(task: Task) -> str:
    return " or ".join(task.answers())


def judge_messages(task: Task, steps: list[Step]) -> list[dict]:
    """Prompt 1: the whole trajectory and the gold answer -> which step first went wrong, as JSON."""
    user = (
        f"Task: {task.question}\nGold answer: {gold_text(task)}\n\nThe agent's steps:\n\n{render_numbered(steps)}\n\n"
        "Find the first step that makes the agent miss the gold answer. Reply with JSON only: "
        '{"answer_correct": true or false, "first_error_step": the step number or null, '
        '"analysis": "why that step is wrong", "suggestion": "what the step should do instead"}'
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def correction_messages(task: Task, prefix: list[Step], faulty: Step, analysis: str, suggestion: str) -> list[dict]:
    """Prompt 2: the verified prefix, the faulty step and the analysis (never the gold answer) -> the step."""
    done = render_numbered(prefix) if prefix else "(none)"
    user = (
        f"Task: {task.question}\n\nVerified steps so far:\n\n{done}\n\n"
        f"The next step was wrong:\n\n{render_numbered([faulty], start=len(prefix) + 1)}\n\n"
        f"Why it is wrong: {analysis.strip() or 'it does not lead to the answer'}\n"
        f"What to do instead: {suggestion.strip() or 'take the right next step'}\n\n"
        "Write the correct next step as <thought>...</thought> followed by <code>...</code>. "
        "Use only what the steps above have shown; do not state a final answer they have not established."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def answer_equivalence_messages(question: str | None, prediction: str, gold: list[str]) -> list[dict]:
    user = (
        (f"Question: {question}\n" if question else "")
        + f"Gold answer: {' or '.join(gold)}\nPredicted answer: {prediction}\n\n"
        'Do they mean the same answer? Reply with JSON only: {"equivalent": true or false, "reason": "..."}'
    )
    return [{"role": "user", "content": user}]


def step_equivalence_messages(task: Task, prefix: list[Step], reference: Step, candidate: Step) -> list[dict]:
    user = (
        f"Task: {task.question}\n\nSteps so far:\n\n{render_numbered(prefix) if prefix else '(none)'}\n\n"
        f"Reference next step:\n{render_numbered([reference], start=len(prefix) + 1)}\n\n"
        f"Candidate next step:\n{render_numbered([candidate], start=len(prefix) + 1)}\n\n"
        'Do the two steps take the same action? Reply with JSON only: {"equivalent": true or false, "reason": "..."}'
    )
    return [{"role": "user", "content": user}]
