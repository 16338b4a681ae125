"""Run state in Redis: the run record and its state machine, stage progress, counters, results, events.

Results are written once per (stage, item key) by a Lua script that also counts the item as settled, so an
item redelivered after a crash can never produce a second result or be counted twice. A worker settles an item
with one script (`settle`) that also enqueues what the item begets and acks it: one round trip per item, and
no crash can leave a result recorded without its follow-ups sent or its entry acked.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from services.coordinator import keys
from services.coordinator.queue import WorkItem
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import (
    RUN_TRANSITIONS, STAGES, DeadLetter, RunEvent, RunInfo, RunPointers, RunState, StageProgress,
)

EVENTS_MAXLEN = 20_000  # per run; SSE clients that fall further behind resume from the oldest kept

# Returns the settled count after recording, -1 when this key already had a result, -2 when the key is not
# one the stage planned (a stray or forged item must not complete a stage early).
_RECORD = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return -2 end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return -1 end
redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':' .. ARGV[4], 1)
return redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':settled', 1)
"""

# _RECORD, then enqueue the follow-ups (planning their keys first), the completion item if this record brings
# the settled count to exactly ARGV[8], and ack + delete the item's entry. A result already there was settled
# by another delivery of the item, follow-ups and all: only ack. Returns {settled, done, failed}, settled as
# _RECORD's. KEYS: results, stages, planned, the item's stream, then a (stream, planned set) pair per follow-up,
# then the completion item's stream if any. ARGV: item key, result, stage, outcome, group, entry id, follow-up
# count, completion count (0: none), then per follow-up its key, its field count and fields, then the
# completion item's field count and fields.
_SETTLE = """
local function ack()
  if ARGV[6] ~= '' then
    redis.call('XACK', KEYS[4], ARGV[5], ARGV[6])
    redis.call('XDEL', KEYS[4], ARGV[6])
  end
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return {-2, 0, 0} end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  ack()
  return {-1, 0, 0}
end
local counted = redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':' .. ARGV[4], 1)
local settled = redis.call('HINCRBY', KEYS[2], ARGV[3] .. ':settled', 1)
local a, k = 9, 5
for _ = 1, tonumber(ARGV[7]) do
  local n = tonumber(ARGV[a + 1])
  redis.call('SADD', KEYS[k + 1], ARGV[a])
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, a + 2, a + 1 + n))
  a, k = a + 2 + n, k + 2
end
if settled == tonumber(ARGV[8]) then
  redis.call('XADD', KEYS[k], '*', unpack(ARGV, a + 1, a + tonumber(ARGV[a])))
end
ack()
if ARGV[4] == 'done' then return {settled, counted, settled - counted} end
return {settled, settled - counted, counted}
"""

# A stage's progress (StageProgress JSON) written only while the stored one is still running: an item's progress
# must not overwrite what `finish` wrote after the item's record completed the stage.
_RUNNING_PROGRESS = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current or cjson.decode(current).state ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Compare-and-set of the run state: ARGV = target, timestamp, then the states it may come from.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return {-1, ''} end
for i = 3, #ARGV do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'updated_at', ARGV[2])
    return {1, current}
  end
end
return {0, current}
"""


class Settlement(NamedTuple):
    settled: int  # the stage's settled count after this record; -1 already recorded, -2 not planned
    done: int
    failed: int


class RunNotFound(KeyError):
    pass


class IllegalTransition(RuntimeError):
    def __init__(self, run_id: str, current: str, target: str) -> None:
        super().__init__(f"run {run_id} is {current}; it cannot become {target}")
        self.current, self.target = current, target


AHEAD_TTL_S = 6 * 3600


class RunStore:
    def __init__(self, client: aioredis.Redis, runs_dir) -> None:
        self.redis = client
        self.runs_dir = runs_dir
        self._record = client.register_script(_RECORD)
        self._settle = client.register_script(_SETTLE)
        self._running_progress = client.register_script(_RUNNING_PROGRESS)
        self._transition = client.register_script(_TRANSITION)

    # --- runs ----------------------------------------------------------------------------------

    async def create(self, run_id: str, config: RunConfig) -> None:
        now = time.time()
        stages = {stage: StageProgress(state="pending").model_dump_json() for stage in STAGES}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.run(run_id), mapping={
                "id": run_id, "config": config.model_dump_json(), "state": RunState.queued.value,
                "created_at": now, "updated_at": now,
            })
            pipe.hset(keys.stages(run_id), mapping=stages)
            pipe.zadd(keys.runs(), {run_id: now})
            await pipe.execute()

    async def exists(self, run_id: str) -> bool:
        return bool(await self.redis.exists(keys.run(run_id)))

    async def config(self, run_id: str) -> RunConfig:
        raw = await self.redis.hget(keys.run(run_id), "config")
        if raw is None:
            raise RunNotFound(run_id)
        return RunConfig.model_validate_json(raw)

    async def state(self, run_id: str) -> RunState:
        raw = await self.redis.hget(keys.run(run_id), "state")
        if raw is None:
            raise RunNotFound(run_id)
        return RunState(raw.decode() if isinstance(raw, bytes) else raw)

    async def transition(self, run_id: str, target: RunState, *, error: str | None = None) -> RunState:
        """Move the run to `target` if that is legal from its current state; returns the previous state."""
        sources = [s.value for s, targets in RUN_TRANSITIONS.items() if target in targets]
        ok, current = await self._transition(keys=[keys.run(run_id)], args=[target.value, time.time(), *sources])
        current = current.decode() if isinstance(current, bytes) else current
        if ok == -1:
            raise RunNotFound(run_id)
        if ok == 0:
            if current == target.value:
                return RunState(current)
            raise IllegalTransition(run_id, current, target.value)
        if error is not None:
            await self.redis.hset(keys.run(run_id), "error", error)
        await self.event(run_id, "state", f"run {target.value}" + (f": {error}" if error else ""),
                         data={"state": target.value, "from": current})
        return RunState(current)

    async def set_fields(self, run_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        await self.redis.hset(keys.run(run_id), mapping={k: _scalar(v) for k, v in fields.items()})

    async def field(self, run_id: str, name: str) -> str | None:
        raw = await self.redis.hget(keys.run(run_id), name)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def info(self, run_id: str) -> RunInfo:
        record = _decode(await self.redis.hgetall(keys.run(run_id)))
        if not record:
            raise RunNotFound(run_id)
        stage_raw = _decode(await self.redis.hgetall(keys.stages(run_id)))
        stages = {s: StageProgress.model_validate_json(stage_raw[s]) for s in STAGES if s in stage_raw}
        counters = {k: _number(v) for k, v in _decode(await self.redis.hgetall(keys.counters(run_id))).items()}
        evals = {k: json.loads(v) for k, v in _decode(await self.redis.hgetall(keys.evals(run_id))).items()}
        return RunInfo(
            id=run_id, name=RunConfig.model_validate_json(record["config"]).name, state=RunState(record["state"]),
            stage=record.get("stage") or None, stages=stages, counters=counters, eval=evals,
            policy_version=_pointers(record).policy_version,
            error=record.get("error") or None, created_at=float(record["created_at"]),
            updated_at=float(record["updated_at"]), artifacts=str(self.runs_dir / run_id),
            config=RunConfig.model_validate_json(record["config"]),
        )

    async def list_ids(self) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else i for i in await self.redis.zrevrange(keys.runs(), 0, -1)]

    # --- pointers ------------------------------------------------------------------------------

    async def pointers(self, run_id: str) -> RunPointers:
        """The checkpoints the run points at and its policy version (unset ones are None)."""
        names = list(RunPointers.model_fields)
        return _pointers(_decode(dict(zip(names, await self.redis.hmget(keys.run(run_id), names)))))

    async def set_pointers(self, run_id: str, pointers: RunPointers) -> None:
        """Write the pointers `pointers` was given (the others keep their values) in one write, each as JSON."""
        given = pointers.model_dump(mode="json", exclude_unset=True)
        await self.set_fields(run_id, **{name: json.dumps(value) for name, value in given.items()})

    # --- stages --------------------------------------------------------------------------------

    async def stage(self, run_id: str, stage: str) -> StageProgress:
        raw = await self.redis.hget(keys.stages(run_id), stage)
        return StageProgress.model_validate_json(raw) if raw else StageProgress(state="pending")

    async def update_stage(self, run_id: str, stage: str, **changes: Any) -> StageProgress:
        progress = (await self.stage(run_id, stage)).model_copy(update=changes)
        await self.redis.hset(keys.stages(run_id), stage, progress.model_dump_json())
        return progress

    async def update_running_stage(self, run_id: str, stage: str, progress: StageProgress) -> bool:
        """Write a running stage's progress unless the stage stopped running meanwhile; True if written."""
        return bool(await self._running_progress(keys=[keys.stages(run_id)], args=[stage, progress.model_dump_json()]))

    async def settled(self, run_id: str, stage: str) -> tuple[int, int]:
        """(done, failed) items of a stage, from the counts the record script keeps."""
        done, failed = await self.redis.hmget(keys.stages(run_id), f"{stage}:done", f"{stage}:failed")
        return int(done or 0), int(failed or 0)

    # --- results -------------------------------------------------------------------------------

    async def record(self, run_id: str, stage: str, item_key: str, result: dict, *, failed: bool = False) -> int:
        """Store an item's result once; returns the stage's settled count, or -1 if it was already recorded."""
        return int(await self._record(
            keys=[keys.results(run_id, stage), keys.stages(run_id), keys.planned(run_id, stage)],
            args=[item_key, json.dumps(result), stage, "failed" if failed else "done"],
        ))

    async def settle(self, item: WorkItem, result: dict, *, failed: bool = False, follow_ups: list[WorkItem] = (),
                     when_settled: tuple[int, WorkItem] | None = None) -> Settlement:
        """Record a read item's result once, enqueue its follow-ups, and ack it, in one step.

        Follow-ups (items the item begets, each with its queue) are added to their stages' plans and enqueued.
        `when_settled=(n, item)` also enqueues `item` if this record is the stage's n-th settled item. An item
        whose result is already recorded is only acked (settled -1); a key the stage never planned changes
        nothing (settled -2).
        """
        stream_keys = [keys.results(item.run_id, item.stage), keys.stages(item.run_id),
                       keys.planned(item.run_id, item.stage), keys.queue(item.queue)]
        args = [item.key, json.dumps(result), item.stage, "failed" if failed else "done", keys.GROUP,
                item.entry_id, len(follow_ups), when_settled[0] if when_settled else 0]
        for follow in follow_ups:
            if not follow.queue:
                raise ValueError(f"follow-up {follow.stage}/{follow.key} names no queue")
            fields = follow.flat_fields()
            stream_keys += [keys.queue(follow.queue), keys.planned(follow.run_id, follow.stage)]
            args += [follow.key, len(fields), *fields]
        if when_settled:
            fields = when_settled[1].flat_fields()
            stream_keys.append(keys.queue(when_settled[1].queue))
            args += [len(fields), *fields]
        return Settlement(*await self._settle(keys=stream_keys, args=args))

    async def plan(self, run_id: str, stage: str, item_keys: list[str]) -> None:
        """Register the item keys a stage expects; only these can be recorded and counted."""
        if item_keys:
            await self.redis.sadd(keys.planned(run_id, stage), *item_keys)

    async def is_planned(self, run_id: str, stage: str, item_key: str) -> bool:
        return bool(await self.redis.sismember(keys.planned(run_id, stage), item_key))

    async def has_result(self, run_id: str, stage: str, item_key: str) -> bool:
        return bool(await self.redis.hexists(keys.results(run_id, stage), item_key))

    async def results(self, run_id: str, stage: str) -> dict[str, dict]:
        raw = _decode(await self.redis.hgetall(keys.results(run_id, stage)))
        return {key: json.loads(value) for key, value in sorted(raw.items())}

    async def put_ahead(self, run_id: str, stage: str, batch: str) -> None:
        """Keep the batch a streamed step prepared for the next one (whichever worker takes that one). It expires:
        a batch nobody takes is never worth keeping."""
        await self.redis.set(keys.ahead(run_id, stage), batch, ex=AHEAD_TTL_S)

    async def take_ahead(self, run_id: str, stage: str) -> str | None:
        async with self.redis.pipeline(transaction=True) as pipe:  # GET then DEL: GETDEL needs Redis 6.2
            pipe.get(keys.ahead(run_id, stage))
            pipe.delete(keys.ahead(run_id, stage))
            raw, _ = await pipe.execute()
        return raw.decode() if isinstance(raw, bytes) else raw

    async def count_attempt(self, run_id: str, stage: str, item_key: str) -> int:
        return int(await self.redis.hincrby(keys.attempts(run_id), f"{stage}/{item_key}", 1))

    # --- counters and eval ---------------------------------------------------------------------

    async def add(self, run_id: str, **amounts: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, amount in amounts.items():
                if isinstance(amount, int):
                    pipe.hincrby(keys.counters(run_id), name, amount)
                else:
                    pipe.hincrbyfloat(keys.counters(run_id), name, amount)
            await pipe.execute()

    async def set_counters(self, run_id: str, **values: float) -> None:
        await self.redis.hset(keys.counters(run_id), mapping=values)

    async def set_eval(self, run_id: str, label: str, result: dict) -> None:
        await self.redis.hset(keys.evals(run_id), label, json.dumps(result))

    async def evals(self, run_id: str) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in _decode(await self.redis.hgetall(keys.evals(run_id))).items()}

    # --- events --------------------------------------------------------------------------------

    async def event(self, run_id: str, type_: str, message: str, *, stage: str | None = None,
                    data: dict | None = None) -> None:
        fields = {"type": type_, "message": message, "stage": stage or "", "data": json.dumps(data or {}),
                  "time": repr(time.time())}
        await self.redis.xadd(keys.events(run_id), fields, maxlen=EVENTS_MAXLEN, approximate=True)

    async def read_events(self, run_id: str, after: str = "0", *, block_ms: int | None = None,
                          count: int = 500) -> list[RunEvent]:
        reply = await self.redis.xread({keys.events(run_id): after}, count=count, block=block_ms)
        events = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                f = _decode(fields)
                events.append(RunEvent(
                    id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id, run_id=run_id,
                    type=f["type"], stage=f.get("stage") or None, message=f["message"],
                    data=json.loads(f.get("data") or "{}"), time=float(f["time"]),
                ))
        return events

    # --- dead letters --------------------------------------------------------------------------

    async def dead_letters(self, run_id: str) -> list[DeadLetter]:
        letters = []
        for queue in keys.WORK_STAGES + (keys.CONTROL,):
            for _entry_id, fields in await self.redis.xrange(keys.dead_letters(queue)):
                f = _decode(fields)
                if f.get("run_id") == run_id:
                    letters.append(DeadLetter(stage=f["stage"], item_key=f["key"], error=f["error"],
                                              attempts=int(f["attempts"]), time=float(f["time"])))
        return sorted(letters, key=lambda letter: letter.time)


def _decode(mapping: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in mapping.items()}


def _pointers(record: dict[str, str | None]) -> RunPointers:
    """The pointers among a run hash's fields (each stored as JSON)."""
    return RunPointers.model_validate({name: json.loads(record[name]) for name in RunPointers.model_fields
                                       if record.get(name) is not None})


def _scalar(value: Any) -> str | int | float:
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(value)


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value
