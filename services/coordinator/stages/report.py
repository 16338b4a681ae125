"""The last stage: the student is given back the run's final policy; metrics, report and plots are written."""

from __future__ import annotations

import asyncio
import time

from services.coordinator.context import RunContext
from services.coordinator.records import records_of
from services.coordinator.stages.base import Stage
from shared.schemas.runs import STAGES, RunState


async def run_timing(ctx: RunContext) -> dict:
    stages = {}
    for name in STAGES:
        progress = await ctx.store.stage(ctx.run_id, name)
        if progress.started_at:
            stages[name] = round((progress.finished_at or time.time()) - progress.started_at, 3)
    counters = (await ctx.store.info(ctx.run_id)).counters
    overhead = float(counters.get("coordinator_overhead_s", 0.0))
    wall = time.time() - float(await ctx.store.field(ctx.run_id, "created_at") or time.time())
    return {"stages": stages, "coordinator_overhead_s": round(overhead, 3),
            "overhead_share": round(overhead / wall, 4) if wall > 0 else 0.0, "wall_s": round(wall, 3)}


async def all_records(ctx: RunContext):
    records = []
    for stage in ("bc_init", "mps", "baseline", "baseline_tokens"):
        records += records_of(await ctx.store.results(ctx.run_id, stage))
    return records


async def step_results(ctx: RunContext, stage: str) -> list[dict]:
    """A chained stage's step results in step order (dead letters left out)."""
    results = (await ctx.store.results(ctx.run_id, stage)).values()
    return sorted((r for r in results if "step" in r), key=lambda r: r["step"])


class ReportStage(Stage):
    name = "report"

    async def finish(self, ctx: RunContext) -> None:
        from services.coordinator.report import build_metrics, write_report

        # The SCoRe policy (RL, else SFT, else cold start): the reference arms' evaluations may have replaced it.
        final = (await ctx.store.pointers(ctx.run_id)).score_checkpoint
        if final is not None:
            await ctx.use_student(final.checkpoint, label=final.label)
        rl_steps = await step_results(ctx, "rl")
        arm_steps = {stage: await step_results(ctx, stage) for stage in ("opd", "score_opd")}
        # The report is the last stage: once it is written the run succeeds, so that is the state it records.
        info = (await ctx.store.info(ctx.run_id)).model_copy(update={"state": RunState.succeeded})
        metrics = build_metrics(info, await all_records(ctx), rl_steps, await ctx.store.dead_letters(ctx.run_id),
                                await run_timing(ctx), arm_steps)
        # Plotting takes a second or two of CPU: off the event loop, so the worker keeps its items alive meanwhile.
        await asyncio.to_thread(write_report, ctx.run_dir, metrics)
        await ctx.store.event(ctx.run_id, "log", f"report written to {ctx.run_dir / 'report.md'}", stage=self.name,
                              data={"report": str(ctx.run_dir / "report.md"), "metrics": str(ctx.run_dir / "metrics.json")})
