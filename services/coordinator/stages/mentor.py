"""Mentored problem solving: the student acts; on a wrong answer the teacher corrects the first critical error,
the student resumes from the verified prefix plus the corrected step; up to `max_repairs` times.

Tasks of the RL pool get one correction and no repair loop: their (prefix, chosen step, rejected step) is what
SCoRe-RL starts from. One item per task, so every task appears once in the datasets whatever redeliveries.
"""

from __future__ import annotations

import zlib

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.stages.base import Stage
from shared.schemas.agent import Episode, Task
from shared.schemas.rollout import RolloutItem
from shared.schemas.runs import Repair, TrajectoryRecord
from shared.schemas.sampling import SamplingParams
from shared.schemas.teacher import CorrectionItem, GradedTask
from shared.scoring import score_answer_async


def act_turns(steps) -> int:
    return sum(step.kind == "act" for step in steps)


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
        episode = await self._rollout(ctx, task, [], params.max_turns, sampling)
        student_tokens = sum(episode.loss_mask)
        repairs: list[Repair] = []
        first: tuple[int, object, object] | None = None
        max_repairs = params.max_repairs if pool == "train" else 1
        outcome = None
        while outcome is None:
            if (await score_answer_async(episode.final_answer, task.true_answer)).correct:
                outcome = "self_solved" if not repairs else "repaired"
                break
            if len(repairs) >= max_repairs:
                outcome = "unsolved"
                break
            correction = (await ctx.services.teacher.corrections(
                [CorrectionItem(task=GradedTask.model_validate(task.model_dump()), steps=episode.steps)], params.strategy)).corrections[0]
            repairs.append(Repair(first_error_step=correction.first_error_step, hard=correction.hard,
                                  reason=correction.reason, teacher_tokens=correction.cost.teacher_tokens,
                                  teacher_calls=correction.cost.teacher_calls))
            if correction.hard or correction.corrected_step is None or correction.first_error_step is None:
                outcome = "hard"
                break
            k = correction.first_error_step
            if first is None:
                first = (k, episode.steps[k], correction.corrected_step)
            if pool == "rl":
                outcome = "unsolved"  # RL keeps the correction; the student's continuation is RL's job
                break
            prefix = [*episode.steps[:k], correction.corrected_step]
            remaining = max(1, params.max_turns - act_turns(prefix))
            episode = await self._rollout(ctx, task, prefix, remaining, sampling)
            student_tokens += sum(episode.loss_mask)

        record = TrajectoryRecord(
            run_id=ctx.run_id, stage=self.name, pool=pool, task=task, outcome=outcome, steps=episode.steps,
            final_answer=episode.final_answer, correct=outcome in ("self_solved", "repaired"), repairs=repairs,
            first_error_step=first[0] if first else None, rejected_step=first[1] if first else None,
            chosen_step=first[2] if first else None, teacher_tokens=sum(r.teacher_tokens for r in repairs),
            policy_version=version, student_tokens=student_tokens,
        )
        await ctx.store.add(ctx.run_id, **{f"mps_{pool}_{outcome}": 1, "repairs": len(repairs),
                                           "teacher_tokens": record.teacher_tokens,
                                           "mps_teacher_tokens": record.teacher_tokens})
        return {"record": record.model_dump(mode="json")}

    async def _rollout(self, ctx: RunContext, task: Task, prefix, max_turns: int, sampling) -> Episode:
        response = await ctx.services.student.rollouts([RolloutItem(task=task, prefix_steps=prefix)], n=1,
                                                       max_turns=max_turns, sampling=sampling)
        return response.episodes[0]
