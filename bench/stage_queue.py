"""Stage hops on Redis Streams: hops/s and per-hop latency through the coordinator's own queue and store.

A chain of stages (the coordinator's work queues) against an embedded redis-server with persistence off. A
producer feeds items into the first stage; asyncio consumers on every stage read a batch and, per item, do
what a worker does around a finished item: record the result once (RunStore.record, the Lua path, with the
keys planned via RunStore.plan), enqueue the item to the next stage, and ack. A hop is one item's stay in one
stage, from its put to its ack; its latency is measured from the put timestamp carried in the payload.

The producer keeps at most `--inflight` items in the chain (a closed loop), so latency reflects that load and
not an ever-growing backlog. A warm-up phase on a separate run id comes first and is not counted.

With `--metrics PATH` (or the newest run under $SCORE_HOME/runs) it also prints the demo's time split: time
per stage, wall time and the coordinator's own overhead with its share of the wall time.

    .venv/bin/python bench/stage_queue.py [--hops 20000] [--stages 4] [--consumers 1] [--batch 16] [--inflight 32]

Prints a table and writes bench/results/queue.json.
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder comes first on sys.path, and its name would then shadow the standard
# library's `queue` for everything imported after (asyncio's executors, logging.handlers).
if sys.path and sys.path[0] and __name__ == "__main__":
    from os.path import abspath, dirname

    if abspath(sys.path[0]) == dirname(abspath(__file__)):
        del sys.path[0]

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from services.coordinator import keys  # noqa: E402
from services.coordinator.queue import StageQueue, WorkItem  # noqa: E402
from services.coordinator.redis_client import connect  # noqa: E402
from services.coordinator.store import RunStore  # noqa: E402

TARGET_HOPS_PER_S = 2_000
TARGET_P50_MS = 5.0
TARGET_OVERHEAD_SHARE = 0.05


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def _phase(client: aioredis.Redis, store: RunStore, run_id: str, chain: list[str], items: int, *,
                 consumers: int, batch: int, inflight: int, block_ms: int) -> dict:
    """Push `items` items through every stage of `chain`; returns the latencies and the bookkeeping."""
    for stage in chain:
        await store.plan(run_id, stage, [f"item-{i}" for i in range(items)])
    latencies: list[float] = []
    duplicates = 0
    finished = 0
    done = asyncio.Event()
    window = asyncio.Semaphore(inflight)
    last = len(chain) - 1

    async def hop(position: int, item: WorkItem) -> None:
        nonlocal duplicates, finished
        follow_ups = []
        if position < last:
            nxt = chain[position + 1]
            follow_ups.append(WorkItem(run_id, nxt, item.key, {"i": item.payload["i"], "t_put": time.perf_counter()},
                                       queue=nxt))
        # What the worker does with a finished item: record, forward and ack in one step.
        outcome = await store.settle(item, {"i": item.payload["i"], "ok": True}, follow_ups=follow_ups)
        if outcome.settled == -1:
            duplicates += 1
        latencies.append(time.perf_counter() - item.payload["t_put"])
        if position == last:
            finished += 1
            window.release()
            if finished == items:
                done.set()

    async def consume(position: int, index: int) -> None:
        stage = chain[position]
        queue = StageQueue(client, f"bench-{stage}-{index}")
        while not done.is_set():
            batch_items = await queue.read([stage], count=batch, block_ms=block_ms)
            # One task per item, as the worker spawns them, so a batch's round trips overlap.
            await asyncio.gather(*(hop(position, item) for item in batch_items))

    async def produce() -> None:
        queue = StageQueue(client, "bench-producer")
        first = chain[0]
        for i in range(items):
            await window.acquire()
            await queue.put(first, [WorkItem(run_id, first, f"item-{i}", {"i": i, "t_put": time.perf_counter()})])

    tasks = [asyncio.create_task(consume(p, c)) for p in range(len(chain)) for c in range(consumers)]
    started = time.perf_counter()
    await produce()
    await done.wait()
    elapsed = time.perf_counter() - started
    await asyncio.gather(*tasks)

    recorded = {stage: int(await client.hlen(keys.results(run_id, stage))) for stage in chain}
    settled = {stage: await store.settled(run_id, stage) for stage in chain}
    leftover = {stage: int(await client.xlen(keys.queue(stage))) for stage in chain}
    return {"latencies": latencies, "elapsed_s": elapsed, "duplicates": duplicates, "recorded": recorded,
            "settled": settled, "leftover": leftover}


async def stage_hops(redis_url: str, *, hops: int = 20_000, stages: int = 4, consumers: int = 1, batch: int = 16,
                     inflight: int = 32, warmup_hops: int = 1_000, block_ms: int = 50) -> dict:
    """The benchmark's core: warm up, then measure `hops` hops (rounded up to whole items) through the chain."""
    if not 1 <= stages <= len(keys.WORK_STAGES):
        raise ValueError(f"stages must be 1..{len(keys.WORK_STAGES)} (the coordinator's work queues)")
    chain = list(keys.WORK_STAGES[:stages])
    items = -(-hops // stages)
    warmup_items = -(-warmup_hops // stages) if warmup_hops > 0 else 0
    client = connect(redis_url)  # as the coordinator's workers connect
    # Fresh run ids per call: on a server an earlier call used, every record would otherwise be a duplicate.
    tag = uuid.uuid4().hex[:8]
    try:
        store = RunStore(client, Path(tempfile.gettempdir()))
        await StageQueue(client, "bench-setup").ensure_groups()
        if warmup_items:
            await _phase(client, store, f"bench-warmup-{tag}", chain, warmup_items, consumers=consumers, batch=batch,
                         inflight=inflight, block_ms=block_ms)
        # CPU spent per hop on each side tells a saturated machine apart from a slow path.
        server_cpu = await _server_cpu(client)
        client_cpu = time.process_time()
        measured = await _phase(client, store, f"bench-measured-{tag}", chain, items, consumers=consumers, batch=batch,
                                inflight=inflight, block_ms=block_ms)
        client_cpu = time.process_time() - client_cpu
        server_cpu = await _server_cpu(client) - server_cpu
        redis_version = (await client.info("server")).get("redis_version")
    finally:
        await client.aclose()

    latencies_ms = sorted(x * 1000 for x in measured["latencies"])
    return {
        "params": {"hops": items * stages, "requested_hops": hops, "stages": chain, "items": items,
                   "consumers_per_stage": consumers, "batch": batch, "inflight": inflight,
                   "warmup_hops": warmup_items * stages, "block_ms": block_ms},
        "hops": len(latencies_ms),
        "elapsed_s": measured["elapsed_s"],
        "hops_per_s": len(latencies_ms) / measured["elapsed_s"],
        "latency_ms": {"p50": _percentile(latencies_ms, 0.50), "p99": _percentile(latencies_ms, 0.99),
                       "max": latencies_ms[-1] if latencies_ms else float("nan"),
                       "mean": sum(latencies_ms) / len(latencies_ms) if latencies_ms else float("nan")},
        "cpu_us_per_hop": {"bench_process": client_cpu / max(1, len(latencies_ms)) * 1e6,
                           "redis_server": server_cpu / max(1, len(latencies_ms)) * 1e6},
        "duplicate_records": measured["duplicates"],
        "recorded": measured["recorded"],
        "settled": {stage: {"done": d, "failed": f} for stage, (d, f) in measured["settled"].items()},
        "left_in_streams": measured["leftover"],
        "redis_version": redis_version,
    }


async def _server_cpu(client: aioredis.Redis) -> float:
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


# --- the demo's time split -----------------------------------------------------------------------------


def newest_metrics() -> Path | None:
    from shared.settings import Settings

    runs_dir = Settings().runs_dir
    found = sorted(runs_dir.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime) if runs_dir.is_dir() else []
    return found[-1] if found else None


def demo_split(path: Path) -> dict:
    metrics = json.loads(Path(path).read_text())
    timing = metrics.get("timing") or {}
    wall = timing.get("wall_s", metrics.get("wall_s"))
    overhead = timing.get("coordinator_overhead_s")
    share = timing.get("overhead_share")
    if share is None and overhead is not None and wall:
        share = overhead / wall
    return {"path": str(path), "run_id": metrics.get("run_id"), "stages_s": timing.get("stages") or {},
            "wall_s": wall, "coordinator_overhead_s": overhead, "overhead_share": share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", type=int, default=20_000)
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--consumers", type=int, default=1, help="consumers per stage")
    parser.add_argument("--batch", type=int, default=16, help="XREADGROUP count")
    parser.add_argument("--inflight", type=int, default=32,
                        help="items in the chain at once (the worker's default concurrency is 32)")
    parser.add_argument("--light-inflight", type=int, default=2, help="items in flight for the light-load latency")
    parser.add_argument("--warmup-hops", type=int, default=1_000)
    parser.add_argument("--metrics", type=Path, default=None, help="a run's metrics.json (default: newest run)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "queue.json"))
    args = parser.parse_args()

    from shared.redis_server import EmbeddedRedis

    import uvloop  # the coordinator's workers run on it too

    with EmbeddedRedis(persistence=False) as server:
        # Throughput with the worker's concurrency in flight; latency at light load, where queueing behind other
        # items in the same consumer does not dominate (each is its own measurement on the same server).
        result = uvloop.run(stage_hops(server.url, hops=args.hops, stages=args.stages, consumers=args.consumers,
                                       batch=args.batch, inflight=args.inflight, warmup_hops=args.warmup_hops))
        light = uvloop.run(stage_hops(server.url, hops=max(1000, args.hops // 10), stages=args.stages,
                                      consumers=args.consumers, batch=args.batch, inflight=args.light_inflight,
                                      warmup_hops=args.warmup_hops // 10))
    result["light_load"] = {"inflight": args.light_inflight, "hops_per_s": light["hops_per_s"],
                            "latency_ms": light["latency_ms"]}

    lat = result["latency_ms"]
    ok_rate = result["hops_per_s"] >= TARGET_HOPS_PER_S
    light_lat = result["light_load"]["latency_ms"]
    ok_p50 = light_lat["p50"] < TARGET_P50_MS
    rows = [
        ("hops measured", f"{result['hops']:,}"),
        ("stages x consumers", f"{args.stages} x {args.consumers}"),
        ("in flight / batch", f"{args.inflight} / {args.batch}"),
        (f"hops/s (target >= {TARGET_HOPS_PER_S:,})", f"{result['hops_per_s']:,.0f} {'ok' if ok_rate else 'MISS'}"),
        ("hop p50 / p99 ms at that load", f"{lat['p50']:.2f} / {lat['p99']:.2f}"),
        (f"hop p50 ms, {args.light_inflight} in flight (target < {TARGET_P50_MS:g})",
         f"{light_lat['p50']:.2f} {'ok' if ok_p50 else 'MISS'}"),
        (f"hop p99 / max ms, {args.light_inflight} in flight", f"{light_lat['p99']:.2f} / {light_lat['max']:.2f}"),
        ("CPU us/hop bench process", f"{result['cpu_us_per_hop']['bench_process']:.0f}"),
        ("CPU us/hop redis-server", f"{result['cpu_us_per_hop']['redis_server']:.0f}"),
        ("duplicate records", str(result["duplicate_records"])),
    ]

    path = args.metrics or newest_metrics()
    demo: dict = {"found": False}
    if path is not None:
        demo = {"found": True, **demo_split(path)}
        for stage, seconds in demo["stages_s"].items():
            rows.append((f"demo {stage} s", f"{seconds:.1f}"))
        if demo["wall_s"] is not None:
            rows.append(("demo wall s", f"{demo['wall_s']:.1f}"))
        if demo["coordinator_overhead_s"] is not None:
            rows.append(("demo coordinator overhead s", f"{demo['coordinator_overhead_s']:.2f}"))
        if demo["overhead_share"] is not None:
            ok_share = demo["overhead_share"] < TARGET_OVERHEAD_SHARE
            rows.append((f"demo overhead share (target < {TARGET_OVERHEAD_SHARE:.0%})",
                         f"{demo['overhead_share']:.2%} {'ok' if ok_share else 'MISS'}"))
    else:
        print("no demo run found (no metrics.json under $SCORE_HOME/runs); pass --metrics PATH for the time split")

    report(rows, {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "redis_version": result.pop("redis_version")},
        "targets": {"hops_per_s": TARGET_HOPS_PER_S, "p50_ms": TARGET_P50_MS,
                    "overhead_share": TARGET_OVERHEAD_SHARE},
        "met": {"hops_per_s": ok_rate, "p50_ms": ok_p50,
                "overhead_share": (demo["overhead_share"] < TARGET_OVERHEAD_SHARE)
                if demo.get("overhead_share") is not None else None},
        **result,
        "demo": demo,
    }, args.out)


if __name__ == "__main__":
    main()
