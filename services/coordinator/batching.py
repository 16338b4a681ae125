"""Gather one-item calls from concurrent work items into batched calls.

A worker runs many items at once (`worker_concurrency`), and each MPS item asks the teacher for one correction
at a time. Sent one by one, the teacher batches only the prefixes of one trajectory; gathered here, one
request carries the failed trajectories of every item that is waiting, and the teacher batches its proposals
over all of them. A batch goes out when `max_size` calls are waiting or `max_wait_s` after its first call
arrived, whichever comes first, so a lone call waits at most `max_wait_s`.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """`submit(x)` answers `call([..., x, ...])[i]`; `call` must answer its inputs in order, one each."""

    def __init__(self, call: Callable[[list[In]], Awaitable[list[Out]]], *, max_size: int, max_wait_s: float) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.call, self.max_size, self.max_wait_s = call, max_size, max_wait_s
        self.pending: list[tuple[In, asyncio.Future]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.in_flight: set[asyncio.Task] = set()  # strong references, so a sent batch is not collected
        self.batches = 0
        self.items = 0

    async def submit(self, item: In) -> Out:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if len(self.pending) >= self.max_size:
            self._flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.pending = [(x, f) for x, f in self.pending if not f.cancelled()], []
        if not batch:
            return
        self.batches += 1
        self.items += len(batch)
        task = asyncio.create_task(self._send(batch))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _send(self, batch: list[tuple[In, asyncio.Future]]) -> None:
        try:
            results = await self.call([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batched call answered {len(results)} results for {len(batch)} inputs")
        except Exception as exc:  # every caller of the batch sees the failure and retries as its item would
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():  # a caller cancelled while the batch was out: its answer is dropped
                future.set_result(result)
