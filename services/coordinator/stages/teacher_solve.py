"""The teacher solves training tasks in the agent format: what cold start and the plain-distillation baselines
share (items of a few tasks each, one batched teacher call per item, a record per task)."""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.records import teacher_record
from services.coordinator.stages.base import Stage, chunks
from shared.scoring import score_answer_async


CHUNK = 8  # tasks per teacher call (the teacher batches them)


class TeacherSolveStage(Stage):
    pool = "bc_init"

    def tasks(self, ctx: RunContext):
        return getattr(ctx.pools, self.pool)

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        return [self.chunk_item(ctx, i, chunk) for i, chunk in enumerate(chunks(self.tasks(ctx), CHUNK))]

    def chunk_item(self, ctx: RunContext, index: int, tasks) -> WorkItem:
        """The item of the pool's `index`-th chunk of tasks (keys sort in pool order)."""
        return self.item(ctx, f"{self.pool}-{index:05d}", task_ids=[t.id for t in tasks])

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
