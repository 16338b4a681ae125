"""The queue and the run store against a real Redis: idempotent results, legal transitions, reclaim, dead letters."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from services.coordinator import keys
from services.coordinator.queue import StageQueue, WorkItem
from services.coordinator.redis_client import connect
from services.coordinator.store import IllegalTransition, RunStore, Settlement
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunState, StageProgress


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


def test_settle_records_forwards_and_acks_in_one_step_and_only_once(redis_url, tmp_path):
    async def scenario():
        client = connect(redis_url)
        queue, store = StageQueue(client, "w"), RunStore(client, tmp_path)
        await queue.ensure_groups()
        await store.plan("r6", "rl", ["step-0", "step-1"])
        await queue.put("rl", [WorkItem("r6", "rl", f"step-{i}", {"step": i}) for i in (0, 1)])
        first, second = await queue.read(["rl"], count=2, block_ms=100)
        follow = WorkItem("r6", "rl", "step-2", {"step": 2}, queue="rl")
        finish = WorkItem("r6", "rl", "finish:rl", {"action": "finish"}, queue=keys.CONTROL)
        settled = await store.settle(first, {"ok": 1}, follow_ups=[follow], when_settled=(3, finish))
        # The same item delivered again (a reclaim racing the original): only acked, nothing sent twice.
        again = await store.settle(first, {"ok": 2}, follow_ups=[follow], when_settled=(1, finish))
        failed = await store.settle(second, {"error": "x"}, failed=True, when_settled=(2, finish))
        forwarded = await queue.read(["rl"], count=10, block_ms=100)
        controls = await queue.read([keys.CONTROL], count=10, block_ms=100)
        planned = await store.is_planned("r6", "rl", "step-2")
        results = await store.results("r6", "rl")
        pending = await client.xpending(keys.queue("rl"), keys.GROUP)
        await client.aclose()
        return settled, again, failed, forwarded, controls, planned, results, pending

    settled, again, failed, forwarded, controls, planned, results, pending = run(scenario())
    assert settled == Settlement(1, 1, 0) and again.settled == -1 and failed == Settlement(2, 1, 1)
    assert [(i.key, i.payload) for i in forwarded] == [("step-2", {"step": 2})] and planned
    assert [(i.key, i.stage) for i in controls] == [("finish:rl", "rl")]  # sent by the record that made it 2
    assert results == {"step-0": {"ok": 1}, "step-1": {"error": "x"}}
    assert pending["pending"] == 1  # only the follow-up, just read: both settled entries were acked


def test_settle_leaves_an_unplanned_item_pending_and_changes_nothing(redis_url, tmp_path):
    async def scenario():
        client = connect(redis_url)
        queue, store = StageQueue(client, "w"), RunStore(client, tmp_path)
        await queue.ensure_groups()
        await queue.put("mps", [WorkItem("r7", "mps", "stray")])
        [item] = await queue.read(["mps"], count=1, block_ms=100)
        outcome = await store.settle(item, {"x": 1}, follow_ups=[WorkItem("r7", "eval_sft", "k", queue="eval")])
        pending = await client.xpending(keys.queue("mps"), keys.GROUP)
        waiting = await client.xlen(keys.queue("eval"))
        results = await store.results("r7", "mps")
        await client.aclose()
        return outcome, pending, waiting, results

    outcome, pending, waiting, results = run(scenario())
    assert outcome.settled == -2 and pending["pending"] == 1 and waiting == 0 and results == {}


def test_a_stage_progress_update_never_overwrites_a_finished_stage(redis_url, tmp_path):
    async def scenario():
        client = connect(redis_url)
        store = RunStore(client, tmp_path)
        await store.create("r8", RunConfig())
        running = await store.update_stage("r8", "mps", state="running", total=2)
        written = await store.update_running_stage("r8", "mps", running.model_copy(update={"done": 1}))
        await store.update_stage("r8", "mps", state="done", done=2)
        late = await store.update_running_stage("r8", "mps", running.model_copy(update={"done": 1}))
        final = await store.stage("r8", "mps")
        await client.aclose()
        return written, late, final

    written, late, final = run(scenario())
    assert written and not late
    assert final == StageProgress(state="done", total=2, done=2, started_at=None)


def test_commands_packed_by_hiredis_are_byte_for_byte_redis_pys(redis_url):
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    from services.coordinator.redis_client import _packed_by_hiredis

    ours, theirs = _packed_by_hiredis(Connection)(), Connection()
    for args in [("HSET", "k", "f", 1712345678.123456789), ("SET", "k", "é"), ("SET", b"k", b"\x00\xff"),
                 ("XADD", "s", "*", "n", -3, "big", 2**70, "tiny", 1e-300), ("CONFIG GET", "maxmemory"),
                 ("SET", "k", bytearray(b"ab")), ("SET", "k", memoryview(b"cd")), ("EVALSHA", "a" * 40, 0)]:
        assert b"".join(map(bytes, ours.pack_command(*args))) == b"".join(map(bytes, theirs.pack_command(*args)))
    for bad in (True, None, [1]):
        for connection in (ours, theirs):
            with pytest.raises(DataError):
                connection.pack_command("SET", "k", bad)

    async def scenario():
        client = connect(redis_url)
        connection = await client.connection_pool.get_connection()
        packer = type(connection)
        await client.connection_pool.release(connection)
        await client.hset("h", mapping={"f": 0.1, "n": 7, "s": "ü"})
        value = await client.hgetall("h")
        await client.aclose()
        return packer, value

    packer, value = run(scenario())
    assert packer.pack_command is not Connection.pack_command
    assert value == {b"f": b"0.1", b"n": b"7", b"s": "ü".encode()}


def test_a_dead_lettered_rl_step_does_not_strand_the_rest_of_the_chain(redis_url, tmp_path):
    """RL steps form a chain (each settled step enqueues the next); a step that fails for good must still pass the
    chain on, or the stage never reaches its count and the run hangs."""
    from services.coordinator import pipeline
    from services.coordinator.context import RunContext

    async def scenario():
        client = connect(redis_url)
        queue, store = StageQueue(client, "w"), RunStore(client, tmp_path)
        await queue.ensure_groups()
        config = RunConfig(rl={"steps": 3})
        await store.create("r9", config)
        ctx = RunContext(run_id="r9", config=config, store=store, queue=queue, services=None, run_dir=tmp_path)
        stage = pipeline.BY_NAME["rl"]
        first = stage.item(ctx, "step-00000", step=0)
        await store.plan("r9", "rl", [first.key])
        await store.update_stage("r9", "rl", state="running", total=3)
        await queue.put("rl", [first])
        seen = []
        for outcome in ({"dead_letter": True, "error": "trainer said 500"}, {"step": 1}, {"step": 2}):
            [item] = await queue.read(["rl"], count=1, block_ms=100)
            seen.append(item.key)
            await pipeline.settle(ctx, stage, item, outcome, failed="dead_letter" in outcome)
        leftover = await queue.read(["rl"], count=10, block_ms=100)
        controls = await queue.read([keys.CONTROL], count=10, block_ms=100)
        settled = await store.settled("r9", "rl")
        await client.aclose()
        return seen, leftover, controls, settled

    seen, leftover, controls, settled = run(scenario())
    assert seen == ["step-00000", "step-00001", "step-00002"] and leftover == []
    assert settled == (2, 1)
    assert [(i.key, i.payload) for i in controls] == [("finish:rl", {"action": "finish"})]
