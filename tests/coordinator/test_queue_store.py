"""The queue and the run store against a real Redis: idempotent results, legal transitions, reclaim, dead letters."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from services.coordinator import keys
from services.coordinator.queue import StageQueue, WorkItem
from services.coordinator.store import IllegalTransition, RunStore
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunState


def run(coro):
    return asyncio.run(coro)


async def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)


def test_a_result_is_recorded_once_and_counted_once(redis_url, tmp_path):
    async def scenario():
        client = await _client(redis_url)
        store = RunStore(client, tmp_path)
        await store.create("r1", RunConfig())
        stray = await store.record("r1", "mps", "task-a", {"x": 0})  # not planned yet
        await store.plan("r1", "mps", ["task-a", "task-b"])
        first = await store.record("r1", "mps", "task-a", {"x": 1})
        again = await store.record("r1", "mps", "task-a", {"x": 2})
        second = await store.record("r1", "mps", "task-b", {"x": 3}, failed=True)
        results = await store.results("r1", "mps")
        settled = await store.settled("r1", "mps")
        await client.aclose()
        return stray, first, again, second, results, settled

    stray, first, again, second, results, settled = run(scenario())
    assert (stray, first, again, second) == (-2, 1, -1, 2)
    assert results == {"task-a": {"x": 1}, "task-b": {"x": 3}}  # the redelivered item did not overwrite
    assert settled == (1, 1)


def test_run_state_machine_refuses_illegal_transitions(redis_url, tmp_path):
    async def scenario():
        client = await _client(redis_url)
        store = RunStore(client, tmp_path)
        await store.create("r2", RunConfig())
        await store.transition("r2", RunState.running)
        await store.transition("r2", RunState.succeeded)
        with pytest.raises(IllegalTransition):
            await store.transition("r2", RunState.running)
        state = await store.state("r2")
        events = await store.read_events("r2")
        await client.aclose()
        return state, events

    state, events = run(scenario())
    assert state == RunState.succeeded
    assert [e.data["state"] for e in events if e.type == "state"] == ["running", "succeeded"]


def test_a_dead_workers_items_are_reclaimed_after_the_visibility_timeout(redis_url):
    async def scenario():
        client = await _client(redis_url)
        dead, alive = StageQueue(client, "dead"), StageQueue(client, "alive")
        await dead.ensure_groups()
        await dead.put("mps", [WorkItem("r3", "mps", f"k{i}") for i in range(3)])
        taken = await dead.read(["mps"], count=10, block_ms=100)
        early = await alive.reclaim("mps", min_idle_ms=300)
        await asyncio.sleep(0.4)
        late = await alive.reclaim("mps", min_idle_ms=300)
        for item in late:
            await alive.ack(item)
        depth = (await alive.depth())["mps"]
        await client.aclose()
        return taken, early, late, depth

    taken, early, late, depth = run(scenario())
    assert len(taken) == 3 and early == []
    assert sorted(i.key for i in late) == ["k0", "k1", "k2"]
    assert depth["pending"] == 0 and depth["waiting"] == 0


def test_keep_alive_stops_reclaim_of_items_in_progress(redis_url):
    async def scenario():
        client = await _client(redis_url)
        busy, other = StageQueue(client, "busy"), StageQueue(client, "other")
        await busy.ensure_groups()
        await busy.put("eval", [WorkItem("r4", "eval_sft", "k")])
        items = await busy.read(["eval"], count=1, block_ms=100)
        for _ in range(3):
            await asyncio.sleep(0.2)
            await busy.keep_alive(items)
        stolen = await other.reclaim("eval", min_idle_ms=300)
        await client.aclose()
        return stolen

    assert run(scenario()) == []


def test_dead_letters_keep_the_error_and_leave_the_queue(redis_url, tmp_path):
    async def scenario():
        client = await _client(redis_url)
        queue, store = StageQueue(client, "w"), RunStore(client, tmp_path)
        await queue.ensure_groups()
        await queue.put("rl", [WorkItem("r5", "rl", "step-00000", {"step": 0})])
        [item] = await queue.read(["rl"], count=1, block_ms=100)
        await queue.dead_letter(item, "ValueError: poisoned", 3)
        letters = await store.dead_letters("r5")
        depth = (await queue.depth())["rl"]
        raw = await client.xlen(keys.dead_letters("rl"))
        await client.aclose()
        return letters, depth, raw

    letters, depth, raw = run(scenario())
    assert [(l.stage, l.item_key, l.attempts) for l in letters] == [("rl", "step-00000", 3)]
    assert "poisoned" in letters[0].error
    assert depth == {"waiting": 0, "pending": 0, "dead": 1} and raw == 1
