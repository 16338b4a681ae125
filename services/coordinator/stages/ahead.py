"""Streaming between a chained stage's steps: the next step's batch is prepared while this step's update runs.

A GRPO-style step samples (the student), scores or judges (the teacher), then updates (the trainer), and on one
machine each service waits for the others. With the trainer's `max_staleness` >= 1 the next step's batch can come
from the policy one version behind the one it trains, so sampling and scoring the next batch overlap this step's
update: the student and teacher work while the trainer does. The batch is awaited before the new weights load, so
it comes from exactly the version its samples say (the trainer's `staleness/mean` reports the lag), and it is kept
in Redis, since the next step may go to another worker process. A batch that is lost (it expired, or its step was
recovered from the trainer) only costs the overlap: its step prepares afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

from services.coordinator.context import RunContext


class StepBatch(BaseModel):
    """What a streamed stage prepares for one step."""

    step: int
    ahead: bool = False  # prepared during the previous step's update


B = TypeVar("B", bound=StepBatch)
R = TypeVar("R")


class BatchesAhead(Generic[B]):
    """Per run and stage, at most one batch: the one prepared for the step after the one updating."""

    def __init__(self, stage: str, model: type[B]) -> None:
        self.stage, self.model = stage, model

    async def take(self, ctx: RunContext, step: int) -> B | None:
        """The batch prepared for `step`, if there is one (any other is dropped: it belongs to no step now)."""
        raw = await ctx.store.take_ahead(ctx.run_id, self.stage)
        batch = self.model.model_validate_json(raw) if raw else None
        return batch if batch is not None and batch.step == step else None

    async def drop(self, ctx: RunContext) -> None:
        await ctx.store.take_ahead(ctx.run_id, self.stage)

    async def update_while_preparing(self, ctx: RunContext, update: Awaitable[R],
                                     prepare: Callable[[], Awaitable[B]] | None) -> tuple[R, float]:
        """Await `update` while `prepare()` (when given) makes the next batch; keep that batch for its step. A failed
        update cancels the preparation; a failed preparation is logged and its step prepares afresh, where a
        lasting fault surfaces. Returns the update's result and the seconds spent waiting for the preparation
        after the update was done."""
        task = asyncio.create_task(prepare()) if prepare is not None else None
        try:
            result = await update
        except BaseException:
            if task is not None:
                task.cancel()
            raise
        updated = time.perf_counter()
        if task is not None:
            try:
                batch = await task
                await ctx.store.put_ahead(ctx.run_id, self.stage, batch.model_dump_json())
            except Exception as exc:  # noqa: BLE001 - this step is done; the next prepares afresh
                ctx.log("%s: preparing the next batch during the update failed (%s); its step prepares afresh",
                        self.stage, exc)
        return result, time.perf_counter() - updated
