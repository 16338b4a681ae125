"""SCoRe-SFT: fine-tune the cold-start student on the repaired trajectories and a share of the self-solved ones."""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.records import keep_share, records_of, rows_for_sft
from services.coordinator.stages.base import Stage
from services.coordinator.stages.training import fine_tune


def sft_records(records, share: float, run_id: str, *, cold_start=(), replay: float = 0.0):
    """Repaired trajectories, a deterministic `share` of the self-solved ones (train pool only), and a `replay`
    share of the correct cold-start trajectories."""
    mentored = [r for r in records if r.pool == "train" and (
        r.outcome == "repaired" or (r.outcome == "self_solved" and keep_share(r.task.id, share, run_id)))]
    replayed = [r for r in cold_start if r.correct and keep_share(r.task.id, replay, run_id + "/replay")]
    return mentored + replayed


class SFTStage(Stage):
    name = "sft"

    async def finish(self, ctx: RunContext) -> None:
        records = sft_records(records_of(await ctx.store.results(ctx.run_id, "mps")),
                              ctx.config.mps.self_solved_share, ctx.run_id,
                              cold_start=records_of(await ctx.store.results(ctx.run_id, "bc_init")),
                              replay=ctx.config.sft.replay_bc_init)
        rows = rows_for_sft(records)
        await ctx.store.add(ctx.run_id, sft_rows=len(rows))
        if not rows:
            # Nothing was repaired: the cold-start policy stays, and the report says so.
            await ctx.store.update_stage(ctx.run_id, self.name, detail="no repaired trajectories; policy unchanged")
            await ctx.store.event(ctx.run_id, "log", "SCoRe-SFT skipped: no repaired or kept self-solved trajectories",
                                  stage=self.name)
            return
        base = await ctx.store.field(ctx.run_id, "bc_init_checkpoint")
        checkpoint = await fine_tune(ctx, stage=self.name, base=base, rows=rows,
                                     hyperparameters=ctx.config.sft.hyperparameters)
        await ctx.use_student(path=checkpoint.path, label="sft")
