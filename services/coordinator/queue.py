"""Work items on Redis Streams with one consumer group: enqueue, read, ack, keep alive, reclaim, dead-letter.

At-least-once delivery: an item stays in the group's pending list until acked. A worker keeps the items it
is processing alive by re-claiming them to itself (resetting their idle time); items of a worker that died
go idle and are taken over by another worker after the visibility timeout (XAUTOCLAIM).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.coordinator import keys

QUEUES = keys.WORK_STAGES + (keys.CONTROL,)


@dataclass
class WorkItem:
    """One unit of work: a stage's item for a run, or a control action (`enter`/`finish` a stage)."""

    run_id: str
    stage: str
    key: str  # idempotency key within (run, stage)
    payload: dict = field(default_factory=dict)
    queue: str = ""  # the stream it travels on
    entry_id: str = ""  # set once read
    enqueued_at: float = 0.0

    def fields(self) -> dict[str, str]:
        return {"run_id": self.run_id, "stage": self.stage, "key": self.key, "payload": json.dumps(self.payload),
                "enqueued_at": repr(time.time())}

    def flat_fields(self) -> list[str]:
        """The stream entry's fields as XADD takes them in a script: name, value, name, value, ..."""
        return ["run_id", self.run_id, "stage", self.stage, "key", self.key, "payload", json.dumps(self.payload),
                "enqueued_at", repr(time.time())]

    @classmethod
    def from_entry(cls, queue: str, entry_id, fields: dict) -> "WorkItem":
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
        return cls(run_id=f["run_id"], stage=f["stage"], key=f["key"], payload=json.loads(f.get("payload", "{}")),
                   queue=queue, entry_id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                   enqueued_at=float(f.get("enqueued_at", 0)))


class StageQueue:
    def __init__(self, client: aioredis.Redis, consumer: str) -> None:
        self.redis = client
        self.consumer = consumer

    async def ensure_groups(self) -> None:
        for queue in QUEUES:
            try:
                await self.redis.xgroup_create(keys.queue(queue), keys.GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def put(self, queue: str, items: list[WorkItem]) -> None:
        if len(items) == 1:  # one XADD is atomic already; a MULTI/EXEC pipeline costs three commands' CPU
            await self.redis.xadd(keys.queue(queue), items[0].fields())
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for item in items:
                pipe.xadd(keys.queue(queue), item.fields())
            await pipe.execute()

    async def read(self, queues: list[str], *, count: int, block_ms: int) -> list[WorkItem]:
        reply = await self.redis.xreadgroup(
            keys.GROUP, self.consumer, {keys.queue(q): ">" for q in queues}, count=count, block=block_ms
        )
        items = []
        for stream, entries in reply or []:
            queue = _queue_name(stream)
            for entry_id, fields in entries:
                try:
                    items.append(WorkItem.from_entry(queue, entry_id, fields))
                except (KeyError, ValueError) as exc:  # not a work item at all: keep it for inspection, move on
                    await self._reject(queue, entry_id, fields, f"malformed work item: {type(exc).__name__}: {exc}")
        return items

    async def _reject(self, queue: str, entry_id, fields: dict, error: str) -> None:
        raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
               for k, v in (fields or {}).items()}
        await self.redis.xadd(keys.dead_letters(queue), {
            "run_id": raw.get("run_id", ""), "stage": raw.get("stage", queue), "key": raw.get("key", ""),
            "error": error, "attempts": 0, "payload": json.dumps(raw)[:20000], "time": repr(time.time())})
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(keys.queue(queue), keys.GROUP, entry_id)
            pipe.xdel(keys.queue(queue), entry_id)
            await pipe.execute()

    async def ack(self, item: WorkItem) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(keys.queue(item.queue), keys.GROUP, item.entry_id)
            pipe.xdel(keys.queue(item.queue), item.entry_id)  # acked entries are history; keep the stream small
            await pipe.execute()

    async def keep_alive(self, items: list[WorkItem]) -> None:
        """Reset the idle time of items this worker is still processing, so nobody reclaims them."""
        for item in items:
            await self.redis.xclaim(keys.queue(item.queue), keys.GROUP, self.consumer, min_idle_time=0,
                                    message_ids=[item.entry_id], justid=True)

    async def reclaim(self, queue: str, *, min_idle_ms: int, count: int = 50) -> list[WorkItem]:
        """Items pending longer than `min_idle_ms` on any consumer (a dead worker), now ours."""
        reply = await self.redis.xautoclaim(keys.queue(queue), keys.GROUP, self.consumer,
                                            min_idle_time=min_idle_ms, start_id="0-0", count=count)
        items = []
        for entry_id, fields in (reply[1] if reply else []):
            try:
                items.append(WorkItem.from_entry(queue, entry_id, fields))
            except (KeyError, ValueError) as exc:
                await self._reject(queue, entry_id, fields, f"malformed work item: {type(exc).__name__}: {exc}")
        return items

    async def dead_letter(self, item: WorkItem, error: str, attempts: int) -> None:
        await self.add_dead_letter(item, error, attempts)
        await self.ack(item)

    async def add_dead_letter(self, item: WorkItem, error: str, attempts: int) -> None:
        """The item's dead letter, leaving the item itself pending (for a caller that acks it on its own)."""
        await self.redis.xadd(keys.dead_letters(item.queue), {
            "run_id": item.run_id, "stage": item.stage, "key": item.key, "error": error[:4000],
            "attempts": attempts, "payload": json.dumps(item.payload)[:20000], "time": repr(time.time()),
        })

    async def depth(self) -> dict[str, dict[str, int]]:
        """Per queue: entries waiting to be read, entries pending (read, not acked), dead letters."""
        out = {}
        for queue in QUEUES:
            try:
                groups = await self.redis.xinfo_groups(keys.queue(queue))
            except ResponseError:
                groups = []
            group = next((g for g in groups if _text(g.get("name")) == keys.GROUP), {})
            out[queue] = {"waiting": int(group.get("lag") or 0), "pending": int(group.get("pending") or 0),
                          "dead": int(await self.redis.xlen(keys.dead_letters(queue)))}
        return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _queue_name(stream) -> str:
    return _text(stream).rsplit(":", 1)[-1]
