"""bench/stage_queue.py's core on a small chain: its numbers add up (no timing assertions: the machine is shared)."""

from __future__ import annotations

import asyncio
import json

from bench.stage_queue import demo_split, stage_hops


def test_every_hop_is_counted_once_and_every_result_recorded_once(redis_url):
    result = asyncio.run(stage_hops(redis_url, hops=300, stages=4, consumers=2, batch=8, inflight=16,
                                    warmup_hops=40))
    items = result["params"]["items"]
    assert items == 75 and result["params"]["hops"] == 300
    assert result["hops"] == 300
    assert result["duplicate_records"] == 0
    for stage in result["params"]["stages"]:
        assert result["recorded"][stage] == items
        assert result["settled"][stage] == {"done": items, "failed": 0}
        assert result["left_in_streams"][stage] == 0  # every entry was acked and deleted
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert result["hops_per_s"] > 0 and result["elapsed_s"] > 0


def test_demo_split_reads_a_runs_timing(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"run_id": "r1", "wall_s": 100.0, "timing": {
        "stages": {"bc_init": 12.0, "mps": 30.5}, "coordinator_overhead_s": 2.5, "wall_s": 100.0}}))
    split = demo_split(path)
    assert split["stages_s"] == {"bc_init": 12.0, "mps": 30.5}
    assert split["wall_s"] == 100.0 and split["coordinator_overhead_s"] == 2.5
    assert split["overhead_share"] == 0.025  # derived when the run did not store it
