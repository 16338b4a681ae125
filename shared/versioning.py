"""A gate that keeps every request on one policy version.

Requests hold a shared lease for their whole duration (a multi-turn rollout
included); a weight load takes the exclusive side: it waits for requests in
flight to finish and holds new ones back until the new version is in place.
Writers are preferred so a steady stream of requests cannot starve a reload.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager


class VersionGate:
    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._readers = 0
        self._writer_active = False
        self._writers_waiting = 0

    @asynccontextmanager
    async def request(self):
        async with self._condition:
            await self._condition.wait_for(lambda: not self._writer_active and self._writers_waiting == 0)
            self._readers += 1
        try:
            yield
        finally:
            async with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @asynccontextmanager
    async def swap(self):
        async with self._condition:
            self._writers_waiting += 1
            try:
                await self._condition.wait_for(lambda: not self._writer_active and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer_active = True
        try:
            yield
        finally:
            async with self._condition:
                self._writer_active = False
                self._condition.notify_all()

    @property
    def in_flight(self) -> int:
        return self._readers
