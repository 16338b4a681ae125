"""The stage interface: plan a stage's work items, handle one item, finish the stage (fan-in)."""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem


class Stage:
    """A stage of the pipeline. Stages without a queue have no items: `finish` does all their work."""

    name: str = ""
    queue: str | None = None

    def enabled(self, ctx: RunContext) -> bool:
        return True

    async def skip_reason(self, ctx: RunContext) -> str | None:
        """Why an enabled stage has nothing to do in this run (decided from earlier stages' results), or None."""
        return None

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        """The stage's work items (their count is the stage's total); [] goes straight to `finish`."""
        return []

    def total(self, ctx: RunContext, items: list[WorkItem]) -> int:
        """How many items the stage settles before it finishes (more than planned when items beget items)."""
        return len(items)

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        """Process one item; the returned JSON is recorded once per item key."""
        raise RuntimeError(f"stage {self.name} has no work items")

    def follow_ups(self, ctx: RunContext, item: WorkItem, result: dict) -> list[WorkItem]:
        """Items a settled item begets: planned and enqueued in the same step that records its result.

        Also called for an item that failed for good (`result` is then its dead letter, `{"dead_letter": True,
        "error": ...}`): the stage's count only completes when every planned item settles, so a chain that
        stopped at a failed link would never finish."""
        return []

    async def finish(self, ctx: RunContext) -> None:
        """Fan-in once every item has settled: datasets, training jobs, weight loads, aggregates."""

    def item(self, ctx: RunContext, key: str, **payload) -> WorkItem:
        return WorkItem(run_id=ctx.run_id, stage=self.name, key=key, payload=payload, queue=self.queue or "")


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]
