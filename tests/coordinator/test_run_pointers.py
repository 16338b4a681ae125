"""A run's pointers (`RunPointers`) through the run store and a real Redis: what is set reads back, what is not
given keeps its value, and each hash field holds the wire model's JSON."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio as aioredis

from services.coordinator import keys
from services.coordinator.store import RunStore
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunPointers, ServedCheckpoint

COLD_START = Checkpoint(name="r1-bc_init", version=1, path="/home/checkpoints/r1-bc_init/v1")
SFT = Checkpoint(name="r1-sft", version=1, path="/home/checkpoints/r1-sft/v1")
BASELINE = Checkpoint(name="r1-baseline", version=1, path="/home/checkpoints/r1-baseline/v1")


def test_pointers_round_trip_and_keep_what_a_write_does_not_name(redis_url, tmp_path):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        store = RunStore(client, tmp_path)
        await store.create("r1", RunConfig())
        fresh = await store.pointers("r1")

        sft = ServedCheckpoint(checkpoint=SFT, policy_version=2, label="sft")
        await store.set_pointers("r1", RunPointers(bc_init_checkpoint=COLD_START))
        await store.set_pointers("r1", RunPointers(student_checkpoint=sft, score_checkpoint=sft, policy_version=2))
        after_sft = await store.pointers("r1")

        # A reference arm moves the student only: the SCoRe policy and the cold start stay as they were.
        baseline = ServedCheckpoint(checkpoint=BASELINE, policy_version=3, label="baseline")
        await store.set_pointers("r1", RunPointers(student_checkpoint=baseline, policy_version=3))
        after_baseline = await store.pointers("r1")
        info = await store.info("r1")
        raw = await client.hget(keys.run("r1"), "bc_init_checkpoint")
        await client.aclose()
        return fresh, after_sft, after_baseline, info, raw

    fresh, after_sft, after_baseline, info, raw = asyncio.run(scenario())
    assert fresh == RunPointers()
    assert after_sft == RunPointers(
        student_checkpoint=ServedCheckpoint(checkpoint=SFT, policy_version=2, label="sft"),
        score_checkpoint=ServedCheckpoint(checkpoint=SFT, policy_version=2, label="sft"),
        bc_init_checkpoint=COLD_START, policy_version=2,
    )
    assert after_baseline.student_checkpoint.checkpoint == BASELINE
    assert after_baseline.score_checkpoint == after_sft.score_checkpoint
    assert after_baseline.bc_init_checkpoint == COLD_START
    assert after_baseline.policy_version == info.policy_version == 3
    # Stored as the wire model: {"name", "version", "path"}, never a bare path.
    assert json.loads(raw) == {"name": "r1-bc_init", "version": 1, "path": "/home/checkpoints/r1-bc_init/v1"}


def test_pointers_of_a_run_that_never_set_them_are_empty(redis_url, tmp_path):
    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        pointers = await RunStore(client, tmp_path).pointers("no-such-run")
        await client.aclose()
        return pointers

    assert asyncio.run(scenario()) == RunPointers()
