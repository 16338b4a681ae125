"""`bc_init`, cold start: the teacher solves a small pool of tasks and the base student is fine-tuned on the
verified-correct trajectories."""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.datasets import bc_init_dataset
from services.coordinator.records import rows_for_sft
from services.coordinator.stages.teacher_solve import TeacherSolveStage
from services.coordinator.stages.training import fine_tune
from shared.schemas.runs import RunPointers


class BCInitStage(TeacherSolveStage):
    name, queue, pool = "bc_init", "bc_init", "bc_init"

    async def finish(self, ctx: RunContext) -> None:
        rows = rows_for_sft(await bc_init_dataset(ctx.store, ctx.run_id, ctx.config))
        if not rows:
            raise RuntimeError("cold start: the teacher solved none of the cold-start tasks; nothing to train on")
        params = ctx.config.bc_init
        checkpoint = await fine_tune(ctx, stage=self.name, base=params.base, rows=rows,
                                     hyperparameters=params.hyperparameters)
        await ctx.use_student(checkpoint, label="bc_init")
        await ctx.store.set_pointers(ctx.run_id, RunPointers(bc_init_checkpoint=checkpoint))
