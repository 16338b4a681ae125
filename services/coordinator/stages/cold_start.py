"""Teacher-solved trajectories: cold start (BC init) and the plain trajectory-distillation baseline.

Both have the teacher solve training tasks in the agent format and fine-tune the *base* student on the
verified-correct trajectories. Cold start uses a small pool; the baseline uses the cold-start trajectories plus
the teacher solving the SCoRe-SFT tasks, so it sees the same training tasks as SCoRe.
"""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.records import records_of, rows_for_sft, teacher_record
from services.coordinator.stages.base import Stage, chunks
from services.coordinator.stages.training import fine_tune
from shared.scoring import score_answer_async

CHUNK = 8  # tasks per teacher call (the teacher batches them)


class TeacherSolveStage(Stage):
    pool = "bc_init"

    def tasks(self, ctx: RunContext):
        return getattr(ctx.pools, self.pool)

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        return [self.item(ctx, f"{self.pool}-{i:05d}", task_ids=[t.id for t in chunk])
                for i, chunk in enumerate(chunks(self.tasks(ctx), CHUNK))]

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        tasks_by_id = ctx.pools.by_id()
        tasks = [tasks_by_id[task_id] for task_id in item.payload["task_ids"]]
        response = await ctx.services.teacher.solve(tasks, max_turns=ctx.config.bc_init.max_turns)
        records = []
        for task, episode in zip(tasks, response.episodes):
            correct = (await score_answer_async(episode.final_answer, task.true_answer)).correct
            records.append(teacher_record(ctx.run_id, self.name, self.pool, task, episode, correct).model_dump(mode="json"))
        solved = sum(r["correct"] for r in records)
        tokens = sum(r["teacher_tokens"] for r in records)
        await ctx.store.add(ctx.run_id, **{f"{self.name}_teacher_solved": solved, f"{self.name}_teacher_tokens": tokens,
                                           "teacher_tokens": tokens})
        return {"records": records}

    async def training_rows(self, ctx: RunContext) -> list[dict]:
        return rows_for_sft(records_of(await ctx.store.results(ctx.run_id, self.name)))


class BCInitStage(TeacherSolveStage):
    name, queue, pool = "bc_init", "bc_init", "bc_init"

    async def finish(self, ctx: RunContext) -> None:
        rows = await self.training_rows(ctx)
        if not rows:
            raise RuntimeError("cold start: the teacher solved none of the cold-start tasks; nothing to train on")
        params = ctx.config.bc_init
        checkpoint = await fine_tune(ctx, stage=self.name, base=params.base, rows=rows,
                                     hyperparameters=params.hyperparameters)
        await ctx.use_student(path=checkpoint.path, label="bc_init")
        await ctx.store.set_fields(ctx.run_id, bc_init_checkpoint=checkpoint.path)


class BaselineStage(TeacherSolveStage):
    name, queue, pool = "baseline", "baseline", "train"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.baseline.enabled

    async def finish(self, ctx: RunContext) -> None:
        rows = rows_for_sft(records_of(await ctx.store.results(ctx.run_id, "bc_init"))) + await self.training_rows(ctx)
        if not rows:
            raise RuntimeError("baseline: the teacher solved none of the training tasks; nothing to train on")
        checkpoint = await fine_tune(ctx, stage=self.name, base=ctx.config.bc_init.base, rows=rows,
                                     hyperparameters=ctx.config.baseline.hyperparameters)
        await ctx.use_student(path=checkpoint.path, label="baseline")
