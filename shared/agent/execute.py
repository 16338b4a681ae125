"""Run steps' code in a sandbox and record what it printed.

The single place where a Step gets its observation, so that rollouts, prefix
replays, gold trajectories and the teacher's checks all agree on what an
action's effect is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from shared.agent.format import format_error_observation
from shared.schemas.agent import Step


@dataclass
class StepOutcome:
    step: Step                 # the step with its observation filled in
    final_answer: str | None   # set when the step called final_answer_print


def execute_step(step: Step, sandbox) -> StepOutcome:
    """Run an `act` step's code (plans run nothing); malformed steps get their format error as observation."""
    if step.kind == "plan":
        return StepOutcome(step.model_copy(update={"observation": None}), None)
    if not (step.code or "").strip():
        reason = step.parse_error or "no code"
        return StepOutcome(step.model_copy(update={"observation": format_error_observation(reason)}), None)
    result = sandbox.run(step.code)
    return StepOutcome(step.model_copy(update={"observation": result.observation}), result.final_answer)


def replay_steps(steps: list[Step], sandbox, *, deadline: float | None = None) -> tuple[list[Step], str | None]:
    """Re-execute steps in order (observations recomputed); returns them and the first final answer, if any.

    With a `deadline` (time.monotonic()), no step starts after it: the steps replayed so far are returned
    (a step already running ends within the sandbox's own step timeout)."""
    replayed: list[Step] = []
    final_answer: str | None = None
    for step in steps:
        if deadline is not None and time.monotonic() >= deadline:
            break
        outcome = execute_step(step, sandbox)
        replayed.append(outcome.step)
        if final_answer is None and outcome.final_answer is not None:
            final_answer = outcome.final_answer
    return replayed, final_answer
