"""Sandboxes for the teacher: replay a prefix, execute one step after it, compare effects.

Every observation still comes from `shared.agent.execute` (the one place observations are made), so a
teacher step and a student step are compared exactly as a rollout would have seen them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from shared.agent.execute import execute_step, replay_steps
from shared.schemas.agent import Step


@dataclass
class Replay:
    steps: list[Step]            # the steps with their recomputed observations
    final_answer: str | None     # the first final_answer_print, if any


def same_effect(a: Step, b: Step) -> bool:
    """Two executed steps had the same effect: equal observations (a plan has none and equals any plan)."""
    if a.kind != b.kind:
        return False
    return (a.observation or "").strip() == (b.observation or "").strip()


def same_code(a: Step, b: Step) -> bool:
    """Identical code run on identical state prints the same, so it needs no execution to compare."""
    return a.kind == b.kind == "act" and (a.code or "").strip() == (b.code or "").strip() and bool((a.code or "").strip())


class Executor:
    """Starts sandboxes from one factory, at most `limit` at once, and runs them in threads."""

    def __init__(self, sandbox_factory: Callable[[], object], *, limit: int = 8) -> None:
        self.sandbox_factory = sandbox_factory
        self._slots = asyncio.Semaphore(limit)

    async def replay(self, steps: list[Step]) -> Replay:
        """Re-execute a whole trajectory in a fresh sandbox (observations recomputed)."""
        return await self.in_sandbox(steps, lambda sandbox, replayed, final_answer: Replay(replayed, final_answer))

    async def run_after(self, prefix: list[Step], step: Step) -> Step:
        """`step` executed in a sandbox rebuilt from `prefix`; returns the step with its observation."""
        return await self.in_sandbox(prefix, lambda sandbox, replayed, final_answer: execute_step(step, sandbox).step)

    async def in_sandbox(self, prefix: list[Step], work: Callable[[object, list[Step], str | None], object]):
        """Rebuild `prefix` in a fresh sandbox and call `work(sandbox, replayed_steps, final_answer)` in a thread."""
        async with self._slots:
            return await asyncio.to_thread(self._in_sandbox_sync, prefix, work)

    def _in_sandbox_sync(self, prefix: list[Step], work):
        sandbox = self.sandbox_factory()
        try:
            replayed, final_answer = replay_steps(prefix, sandbox)
            return work(sandbox, replayed, final_answer)
        finally:
            sandbox.close()
