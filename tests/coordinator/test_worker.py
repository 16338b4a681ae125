"""A stage worker against a real Redis and a real (unhelpful) HTTP server: retries, dead letters, run failure."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import redis.asyncio as aioredis

from services.coordinator.queue import StageQueue
from services.coordinator.runs import RunManager
from services.coordinator.store import RunStore
from services.coordinator.worker import Worker
from shared.redis_server import free_port
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunState
from shared.settings import Settings


def plain_http_server(directory) -> tuple[subprocess.Popen, str]:
    """A server that answers every model-service call with 404/501: a service that refuses, not one that is down."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return process, url


def test_failing_items_are_retried_then_dead_lettered_and_a_failing_stage_fails_the_run(redis_url, tmp_path):
    server, url = plain_http_server(tmp_path)
    settings = Settings(home=tmp_path / "home", redis_url=redis_url)
    config = RunConfig(tasks={"n_bc_init": 3, "n_train": 1, "n_rl": 0, "n_eval": 1}, max_attempts=2,
                       services={"student_url": url, "teacher_url": url, "trainer_url": url})

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        store = RunStore(client, settings.runs_dir)
        queue = StageQueue(client, "api")
        await queue.ensure_groups()
        run = await RunManager(store, queue, settings.runs_dir).create(config)
        worker = Worker(settings, redis_url=redis_url, visibility_ms=5000, block_ms=100)
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (await store.state(run.id)).terminal:
            await asyncio.sleep(0.2)
        worker.stopping.set()
        await task
        info = await store.info(run.id)
        letters = await store.dead_letters(run.id)
        events = await store.read_events(run.id)
        await client.aclose()
        return info, letters, events

    try:
        info, letters, events = asyncio.run(scenario())
    finally:
        server.terminate()
        server.wait(5)
    # The cold-start item (3 tasks, one teacher call) was tried twice, then dead-lettered with the teacher's reply.
    item_letters = [letter for letter in letters if letter.item_key.startswith("bc_init-")]
    assert len(item_letters) == 1 and item_letters[0].attempts == 2
    assert "teacher POST /v1/rollouts -> 501" in item_letters[0].error
    assert info.stages["bc_init"].failed == 1
    # With nothing to train on, finishing the stage fails, and after its attempts the run fails with the reason.
    assert info.state == RunState.failed
    assert "cold start" in info.error and "none of the cold-start tasks" in info.error
    assert any(e.type == "dead_letter" for e in events)
