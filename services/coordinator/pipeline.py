"""The stage graph and its control actions: enter a stage (fan out its items), finish it (fan in), go on.

    bc_init -> eval_bc_init -> mps -> sft -> eval_sft -> rl -> eval_rl -> baseline -> eval_baseline
            -> baseline_tokens -> eval_baseline_tokens -> control -> eval_control -> opd -> eval_opd
            -> score_opd -> eval_score_opd -> eval_teacher -> report

Control actions travel on their own stream, so a transition survives a crash like any item. Both actions are
idempotent: `enter` of a running stage re-enqueues its items (duplicates are dropped by the result record),
`finish` of a done stage only makes sure the next stage is entered.
"""

from __future__ import annotations

import time

from services.coordinator import keys
from services.coordinator.context import RunContext
from services.coordinator.queue import StageQueue, WorkItem
from services.coordinator.stages.base import Stage
from services.coordinator.stages.baseline import BaselineStage, BaselineTokensStage
from services.coordinator.stages.bc_init import BCInitStage
from services.coordinator.stages.control import ControlStage
from services.coordinator.stages.evaluation import EvalStage
from services.coordinator.stages.mps import MPSStage
from services.coordinator.stages.opd import OPDStage
from services.coordinator.stages.report import ReportStage
from services.coordinator.stages.rl import RLStage
from services.coordinator.stages.sft import SFTStage
from shared.schemas.runs import STAGES, RunState

PIPELINE: list[Stage] = [
    BCInitStage(), EvalStage("bc_init"), MPSStage(), SFTStage(), EvalStage("sft"),
    RLStage(), EvalStage("rl", after="rl"),
    BaselineStage(), EvalStage("baseline", after="baseline"),
    BaselineTokensStage(), EvalStage("baseline_tokens", after="baseline_tokens"),
    ControlStage(), EvalStage("control", after="control"),
    OPDStage(), EvalStage("opd", after="opd"),
    RLStage("score_opd"), EvalStage("score_opd", after="score_opd"),
    EvalStage("teacher"), ReportStage(),
]
BY_NAME = {stage.name: stage for stage in PIPELINE}
assert tuple(BY_NAME) == STAGES, "the pipeline and the schema's stage list must agree"


def control(run_id: str, action: str, stage: str) -> WorkItem:
    return WorkItem(run_id=run_id, stage=stage, key=f"{action}:{stage}", payload={"action": action},
                    queue=keys.CONTROL)


async def start(queue: StageQueue, run_id: str) -> None:
    """Begin a queued run at its first stage."""
    await queue.put(keys.CONTROL, [control(run_id, "enter", PIPELINE[0].name)])


async def handle_control(ctx: RunContext, item: WorkItem) -> None:
    stage = BY_NAME[item.stage]
    if item.payload["action"] == "enter":
        await enter(ctx, stage)
    else:
        await finish(ctx, stage)


async def enter(ctx: RunContext, stage: Stage) -> None:
    progress = await ctx.store.stage(ctx.run_id, stage.name)
    if progress.state in ("done", "skipped"):
        await _next(ctx, stage)
        return
    if await ctx.store.state(ctx.run_id) == RunState.queued:
        await ctx.store.transition(ctx.run_id, RunState.running)
    await ctx.store.set_fields(ctx.run_id, stage=stage.name)
    reason = None if stage.enabled(ctx) else "disabled by the run config"
    reason = reason or await stage.skip_reason(ctx)
    if reason is not None:
        await ctx.store.update_stage(ctx.run_id, stage.name, state="skipped", detail=reason)
        await ctx.store.event(ctx.run_id, "stage", f"{stage.name} skipped: {reason}", stage=stage.name,
                              data={"state": "skipped", "reason": reason})
        await _next(ctx, stage)
        return
    items = await stage.plan(ctx)
    total = stage.total(ctx, items)
    await ctx.store.plan(ctx.run_id, stage.name, [item.key for item in items])
    await ctx.store.update_stage(ctx.run_id, stage.name, state="running", total=total,
                                 started_at=progress.started_at or time.time())
    if progress.state == "pending":
        await ctx.store.event(ctx.run_id, "stage", f"{stage.name} started ({total} items)", stage=stage.name,
                              data={"state": "running", "total": total})
    done, failed = await ctx.store.settled(ctx.run_id, stage.name)
    if items and done + failed < total:
        await ctx.queue.put(stage.queue, items)
    else:
        await ctx.queue.put(keys.CONTROL, [control(ctx.run_id, "finish", stage.name)])


async def finish(ctx: RunContext, stage: Stage) -> None:
    progress = await ctx.store.stage(ctx.run_id, stage.name)
    if progress.state not in ("done", "skipped"):
        await stage.finish(ctx)
        done, failed = await ctx.store.settled(ctx.run_id, stage.name)
        finished = time.time()
        await ctx.store.update_stage(ctx.run_id, stage.name, state="done", done=done, failed=failed,
                                     finished_at=finished, eta_s=0.0)
        took = finished - (progress.started_at or finished)
        await ctx.store.event(ctx.run_id, "stage", f"{stage.name} done in {took:.1f}s", stage=stage.name,
                              data={"state": "done", "seconds": took, "done": done, "failed": failed})
    await _next(ctx, stage)


async def _next(ctx: RunContext, stage: Stage) -> None:
    index = PIPELINE.index(stage)
    if index + 1 < len(PIPELINE):
        await ctx.queue.put(keys.CONTROL, [control(ctx.run_id, "enter", PIPELINE[index + 1].name)])
        return
    await ctx.store.set_fields(ctx.run_id, stage="", finished_at=time.time())
    if await ctx.store.state(ctx.run_id) == RunState.running:
        await ctx.store.transition(ctx.run_id, RunState.succeeded)


async def settle(ctx: RunContext, stage: Stage, item: WorkItem, result: dict, *, failed: bool = False) -> int:
    """Record a read item's result, enqueue its follow-ups, send `finish` if it completes the stage, and ack it.

    That is one Lua script (RunStore.settle): a crash leaves all of it done or none of it (the item is then
    redelivered). Exactly one record returns the count that completes the stage, so `finish` is sent once.
    Progress and its event come after, for display only. Returns the settled count (-1: already recorded).
    """
    progress = await ctx.store.stage(ctx.run_id, stage.name)
    finish = (progress.total, control(ctx.run_id, "finish", stage.name)) if progress.state == "running" else None
    # A chain's follow-ups are sent after a failure too: a dead-lettered link must not strand the rest.
    outcome = await ctx.store.settle(item, result, failed=failed, when_settled=finish,
                                     follow_ups=stage.follow_ups(ctx, item, result))
    if outcome.settled == -2:
        raise RuntimeError(f"item {item.key!r} is not part of stage {stage.name}'s plan")
    if outcome.settled == -1:  # another delivery settled it, `finish` included: nothing new to report
        return -1
    done, failed_count = outcome.done, outcome.failed
    elapsed = max(1e-6, time.time() - (progress.started_at or time.time()))
    rate = (done + failed_count) / elapsed
    remaining = max(0, progress.total - done - failed_count)
    eta = round(remaining / rate, 1) if rate > 0 else None
    # Only while the stage runs: the `finish` this record may have sent can be writing the stage's end already.
    await ctx.store.update_running_stage(ctx.run_id, stage.name, progress.model_copy(update={
        "done": done, "failed": failed_count, "items_per_s": round(rate, 3), "eta_s": eta}))
    await ctx.store.event(ctx.run_id, "progress", f"{stage.name}: {done + failed_count}/{progress.total}",
                          stage=stage.name, data={"done": done, "failed": failed_count, "total": progress.total,
                                                  "items_per_s": round(rate, 3), "eta_s": eta})
    return outcome.settled


async def resettle(ctx: RunContext, stage: Stage) -> None:
    """For an item delivered again after its result was recorded: make sure its stage can still finish."""
    progress = await ctx.store.stage(ctx.run_id, stage.name)
    done, failed = await ctx.store.settled(ctx.run_id, stage.name)
    if progress.state == "running" and done + failed >= progress.total:
        await ctx.queue.put(keys.CONTROL, [control(ctx.run_id, "finish", stage.name)])
