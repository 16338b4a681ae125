"""SCoRe-SFT: fine-tune the cold-start student on the repaired trajectories and a share of the self-solved ones."""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.datasets import sft_dataset
from services.coordinator.records import rows_for_sft
from services.coordinator.stages.base import Stage
from services.coordinator.stages.training import fine_tune
from shared.schemas.runs import RunPointers


class SFTStage(Stage):
    name = "sft"

    async def finish(self, ctx: RunContext) -> None:
        rows = rows_for_sft(await sft_dataset(ctx.store, ctx.run_id, ctx.config))
        await ctx.store.add(ctx.run_id, sft_rows=len(rows))
        if not rows:
            # Nothing was repaired: the cold-start policy stays, and the report says so.
            await ctx.store.update_stage(ctx.run_id, self.name, detail="no repaired trajectories; policy unchanged")
            await ctx.store.event(ctx.run_id, "log", "SCoRe-SFT skipped: no repaired or kept self-solved trajectories",
                                  stage=self.name)
            return
        base = (await ctx.store.pointers(ctx.run_id)).bc_init_checkpoint
        checkpoint = await fine_tune(ctx, stage=self.name, base=base, rows=rows,
                                     hyperparameters=ctx.config.sft.hyperparameters)
        await ctx.store.set_pointers(ctx.run_id, RunPointers(sft_checkpoint=checkpoint))
        await ctx.use_student(checkpoint, label="sft")
