"""`control`: more training alone, with no new teacher data, for SCoRe's optimizer steps."""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.records import records_of, rows_for_sft
from services.coordinator.stages.base import Stage
from services.coordinator.stages.training import fine_tune


class ControlStage(Stage):
    """The cold-start checkpoint trained on the cold-start rows only, for SCoRe-SFT's plus SCoRe-RL's optimizer
    steps: what more training alone, with no new teacher data, would give."""

    name = "control"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.control.enabled

    async def finish(self, ctx: RunContext) -> None:
        counters = (await ctx.store.info(ctx.run_id)).counters
        steps = int(counters.get("sft_optimizer_steps", 0)) + int(counters.get("rl_steps", 0))
        rows = rows_for_sft(records_of(await ctx.store.results(ctx.run_id, "bc_init")))
        if steps <= 0 or not rows:
            await ctx.store.update_stage(ctx.run_id, self.name, detail="SCoRe took no optimizer steps; nothing to match")
            return
        hyperparameters = ctx.config.sft.hyperparameters.model_copy(update={"max_steps": steps})
        base = (await ctx.store.pointers(ctx.run_id)).bc_init_checkpoint
        checkpoint = await fine_tune(ctx, stage=self.name, base=base, rows=rows, hyperparameters=hyperparameters)
        await ctx.use_student(checkpoint, label=self.name)
