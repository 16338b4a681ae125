"""Mentored problem solving: the student acts; on a wrong answer the teacher corrects the first critical error,
the student resumes from the verified prefix plus the corrected step; up to `max_repairs` times.

Tasks of the RL pool get one correction and no repair loop: their (prefix, chosen step, rejected step) is what
SCoRe-RL starts from. One item per task, so every task appears once in the datasets whatever redeliveries.

Turn budget: every student attempt, the first and each resumption after a correction, may take `max_turns`
new turns (8 in the paper), as a fresh agent run continuing from the repaired prefix does; a resumption is
never starved to one or two turns because the prefix already used most of the first attempt's budget.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.records import add_spend, correction_spend
from services.coordinator.stages.base import Stage
from shared.schemas.agent import Episode, Step, Task
from shared.schemas.rollout import RolloutItem
from shared.schemas.run_config import MPSParams
from shared.schemas.sampling import SamplingParams
from shared.schemas.teacher import Correction, CorrectionItem, GradedTask
from shared.schemas.trajectories import Repair, TrajectoryRecord
from shared.scoring import score_answer_async

# (task, prefix steps, max new turns) -> the student's episode; (task, steps) -> the teacher's correction.
Rollout = Callable[[Task, list[Step], int], Awaitable[Episode]]
Correct = Callable[[Task, list[Step]], Awaitable[Correction]]


def act_turns(steps) -> int:
    return sum(step.kind == "act" for step in steps)


@dataclass
class Mentored:
    """What one task's mentored episode came to."""

    outcome: str
    episode: Episode
    repairs: list[Repair] = field(default_factory=list)
    first: tuple[int, Step, Step] | None = None  # (first error step, the student's step, the teacher's step)
    student_tokens: int = 0
    correction_cost: list = field(default_factory=list)  # each correction's Cost, in order


async def mentor(task: Task, *, pool: str, params: MPSParams, rollout: Rollout, correct: Correct) -> Mentored:
    """The MPS repair loop for one task (the student and teacher are passed in as calls)."""
    episode = await rollout(task, [], params.max_turns)
    result = Mentored(outcome="", episode=episode, student_tokens=sum(episode.loss_mask))
    max_repairs = params.max_repairs if pool == "train" else 1
    while True:
        if (await score_answer_async(result.episode.final_answer, task.true_answer)).correct:
            result.outcome = "self_solved" if not result.repairs else "repaired"
            return result
        if len(result.repairs) >= max_repairs:
            result.outcome = "unsolved"
            return result
        correction = await correct(task, result.episode.steps)
        result.correction_cost.append(correction.cost)
        result.repairs.append(Repair(first_error_step=correction.first_error_step, hard=correction.hard,
                                     reason=correction.reason, teacher_tokens=correction.cost.teacher_tokens,
                                     teacher_prompt_tokens=correction.cost.teacher_prompt_tokens,
                                     teacher_calls=correction.cost.teacher_calls))
        k = correction.first_error_step
        if correction.hard or correction.corrected_step is None or k is None or k >= len(result.episode.steps):
            result.outcome = "hard"
            return result
        if result.first is None:
            result.first = (k, result.episode.steps[k], correction.corrected_step)
        if pool == "rl":
            result.outcome = "unsolved"  # RL keeps the correction; the student's continuation is RL's job
            return result
        prefix = [*result.episode.steps[:k], correction.corrected_step]
        result.episode = await rollout(task, prefix, params.max_turns)
        result.student_tokens += sum(result.episode.loss_mask)


class MPSStage(Stage):
    name, queue = "mps", "mps"

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        return ([self.item(ctx, f"train-{t.id}", task_id=t.id, pool="train") for t in ctx.pools.train]
                + [self.item(ctx, f"rl-{t.id}", task_id=t.id, pool="rl") for t in ctx.pools.rl])

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        task = ctx.pools.by_id()[item.payload["task_id"]]
        pool = item.payload["pool"]
        version = await ctx.ensure_student()
        params = ctx.config.mps
        sampling = SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens,
                                  seed=zlib.crc32(item.key.encode()))

        async def rollout(task: Task, prefix: list[Step], max_turns: int) -> Episode:
            response = await ctx.services.student.rollouts([RolloutItem(task=task, prefix_steps=prefix)], n=1,
                                                           max_turns=max_turns, sampling=sampling)
            return response.episodes[0]

        async def correct(task: Task, steps: list[Step]) -> Correction:
            return await ctx.corrections.submit(
                CorrectionItem(task=GradedTask.model_validate(task.model_dump()), steps=steps))

        done = await mentor(task, pool=pool, params=params, rollout=rollout, correct=correct)
        episode, first = done.episode, done.first
        record = TrajectoryRecord(
            run_id=ctx.run_id, stage=self.name, pool=pool, task=task, outcome=done.outcome, steps=episode.steps,
            final_answer=episode.final_answer, correct=done.outcome in ("self_solved", "repaired"),
            repairs=done.repairs, first_error_step=first[0] if first else None,
            rejected_step=first[1] if first else None, chosen_step=first[2] if first else None,
            teacher_tokens=sum(r.teacher_tokens for r in done.repairs),
            teacher_prompt_tokens=sum(r.teacher_prompt_tokens for r in done.repairs),
            teacher_spend=add_spend(*(correction_spend(c) for c in done.correction_cost)),
            policy_version=version, student_tokens=done.student_tokens,
        )
        await ctx.store.add(ctx.run_id, **{f"mps_{pool}_{done.outcome}": 1, "repairs": len(done.repairs),
                                           "teacher_tokens": record.teacher_tokens,
                                           "mps_teacher_tokens": record.teacher_tokens})
        return {"record": record.model_dump(mode="json")}
