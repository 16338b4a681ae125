"""Mentored problem solving on the real services: tasks/s of the MPS stage and where its time goes.

Starts the trainer, the scripted teacher and the student as `score demo` does (services/launcher.py), trains
the demo's cold-start student once (teacher trajectories of the demo's cold-start pool, the demo's `bc_init`
hyperparameters; cached by job id in `--home`), loads it, then runs the MPS stage's items as the coordinator's
workers do: `--workers` groups of `--concurrency` items at once, each group with its own corrections
MicroBatcher, each item the stage's own `mentor()` loop with the seed `MPSStage.handle` gives it. Only Redis
bookkeeping is left out (bench/stage_queue.py measures that).

Reported: tasks/s, item latency, the time items spent in student rollouts and in teacher corrections (with
the teacher's own request durations from its log), the CPU seconds each service used (sandboxes included) and
each item's outcome, so two code versions can be compared task by task (`--compare OTHER.json`).

    .venv/bin/python bench/mps_stage.py [--train 64] [--rl 32] [--workers 2] [--concurrency 16] [--out PATH]

Prints a table and writes bench/results/mps_stage.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import yaml  # noqa: E402

from bench.probes import cpu_seconds, engine_counters  # noqa: E402
from bench.report import report  # noqa: E402
from services.coordinator.batching import MicroBatcher  # noqa: E402
from services.coordinator.clients import Services  # noqa: E402
from services.coordinator.pools import draw_pools  # noqa: E402
from services.coordinator.records import rows_for_sft, teacher_record  # noqa: E402
from services.coordinator.stages.base import chunks  # noqa: E402
from services.coordinator.stages.mps import mentor  # noqa: E402
from services.coordinator.stages.teacher_solve import CHUNK  # noqa: E402
from services.launcher import ServiceStack, pick_ports  # noqa: E402
from shared.schemas.rollout import RolloutItem  # noqa: E402
from shared.schemas.run_config import RunConfig  # noqa: E402
from shared.schemas.sampling import SamplingParams  # noqa: E402
from shared.schemas.teacher import GradedTask, CorrectionItem  # noqa: E402
from shared.schemas.training import DatasetSpec, JobRequest  # noqa: E402
from shared.scoring import score_answer_async  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"


def bench_home(path: Path) -> Path:
    """A SCORE_HOME of its own that shares the default home's built-in models."""
    default = Path(os.environ.get("SCORE_HOME") or Path.home() / ".score")
    (path / "models").mkdir(parents=True, exist_ok=True)
    link = path / "models" / "builtin"
    if not link.exists():
        link.symlink_to(default / "models" / "builtin")
    return path


def sandbox_starts(url: str) -> dict[str, float]:
    """How the service's sandboxes got their interpreters (warm, cold, discarded); {} before that was counted."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {kind: float(value) for kind, value in
            re.findall(r'score_sandbox_starts_total\{kind="(\w+)",service="\w+"\} (\S+)', text)}


def teacher_durations(log: Path, offset: int) -> list[float]:
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [float(ms) for ms in re.findall(r"corrections strategy=\S+ items=\d+ .*duration_ms=(\d+)", text)]


async def cold_start(services: Services, config: RunConfig, home: Path) -> dict:
    """The demo's cold start: the teacher solves the cold-start pool, the student is trained on what it solved."""
    pools = draw_pools(config.tasks)
    digest = hashlib.sha256(json.dumps([config.tasks.model_dump(mode="json"),
                                        config.bc_init.model_dump(mode="json")], sort_keys=True).encode())
    job_id = f"bench-mps-cold-start-{digest.hexdigest()[:12]}"
    dataset = home / "bench" / f"{job_id}.jsonl"
    if not dataset.exists():
        limit = asyncio.Semaphore(8)

        async def solve(tasks):
            async with limit:
                response = await services.teacher.solve(tasks, max_turns=config.bc_init.max_turns)
            return [teacher_record("bench", "bc_init", "bc_init", task, episode,
                                   (await score_answer_async(episode.final_answer, task.true_answer)).correct)
                    for task, episode in zip(tasks, response.episodes)]

        started = time.perf_counter()
        solved = await asyncio.gather(*(solve(chunk) for chunk in chunks(pools.bc_init, CHUNK)))
        rows = rows_for_sft([record for chunk in solved for record in chunk])
        dataset.parent.mkdir(parents=True, exist_ok=True)
        dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"cold start: {len(rows)} teacher trajectories in {time.perf_counter() - started:.0f}s", flush=True)
    request = JobRequest(base=config.bc_init.base, dataset=DatasetSpec(path=str(dataset)),
                         hyperparameters=config.bc_init.hyperparameters, output_name=job_id, job_id=job_id)
    job = await services.trainer.create_job(request)
    if job.checkpoint is None:
        print(f"cold start: training {job_id} (once; cached in {home})", flush=True)
    job = await services.trainer.await_job(job_id)
    return {"job_id": job_id, "checkpoint": job.checkpoint}


class Timings:
    def __init__(self) -> None:
        self.rollouts: list[float] = []
        self.corrections: list[float] = []
        self.items: list[float] = []
        self.finished: list[float] = []  # perf_counter when each item finished


async def run_items(services: Services, config: RunConfig, tasks: list[tuple[str, object]], *, workers: int,
                    concurrency: int) -> tuple[list[dict], Timings, list[MicroBatcher]]:
    params = config.mps
    timings = Timings()
    queue: asyncio.Queue = asyncio.Queue()
    for entry in tasks:
        queue.put_nowait(entry)
    results: list[dict] = []

    def batcher() -> MicroBatcher:
        async def call(items):
            return (await services.teacher.corrections(items, params.strategy)).corrections
        return MicroBatcher(call, max_size=params.correction_batch, max_wait_s=params.correction_wait_ms / 1000)

    async def item(pool: str, task, corrections: MicroBatcher) -> None:
        key = f"{pool}-{task.id}"
        sampling = SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens,
                                  seed=zlib.crc32(key.encode()))

        async def rollout(task, prefix, max_turns):
            started = time.perf_counter()
            response = await services.student.rollouts([RolloutItem(task=task, prefix_steps=prefix)], n=1,
                                                       max_turns=max_turns, sampling=sampling)
            timings.rollouts.append(time.perf_counter() - started)
            return response.episodes[0]

        async def correct(task, steps):
            started = time.perf_counter()
            correction = await corrections.submit(
                CorrectionItem(task=GradedTask.model_validate(task.model_dump()), steps=steps))
            timings.corrections.append(time.perf_counter() - started)
            return correction

        started = time.perf_counter()
        done = await mentor(task, pool=pool, params=params, rollout=rollout, correct=correct)
        timings.items.append(time.perf_counter() - started)
        timings.finished.append(time.perf_counter())
        results.append({"key": key, "outcome": done.outcome, "repairs": len(done.repairs),
                        "first_error_step": done.first[0] if done.first else None,
                        "final_answer": done.episode.final_answer, "student_tokens": done.student_tokens,
                        "steps": len(done.episode.steps),
                        "teacher_sandbox_runs": sum(c.sandbox_runs for c in done.correction_cost),
                        "teacher_full_rollouts": sum(c.full_rollouts for c in done.correction_cost)})

    async def worker() -> MicroBatcher:
        corrections = batcher()

        async def slot() -> None:
            while not queue.empty():
                pool, task = queue.get_nowait()
                await item(pool, task, corrections)

        await asyncio.gather(*(slot() for _ in range(concurrency)))
        return corrections

    batchers = await asyncio.gather(*(worker() for _ in range(workers)))
    return sorted(results, key=lambda r: r["key"]), timings, list(batchers)


def steady_rate(started: float, finished: list[float]) -> float:
    """Items/s between the first and the last tenth of completions: the rate with the pipeline full, without the
    ramp-up and the tail of the last long items (which a bench of a few dozen items would otherwise be about)."""
    done = sorted(finished)
    lo, hi = len(done) // 10, len(done) - 1 - len(done) // 10
    if hi <= lo:
        return float("nan")
    return round((hi - lo) / (done[hi] - done[lo]), 3)


def ms(values: list[float], q: float = 0.5) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def measure(stack: ServiceStack, args, config: RunConfig) -> dict:
    services = Services(student_url=stack.urls["student"], teacher_url=stack.urls["teacher"],
                        trainer_url=stack.urls["trainer"])
    try:
        cold = await cold_start(services, config, stack.home)
        await services.student.load(cold["checkpoint"], policy_version=1)
        pools = draw_pools(config.tasks)
        tasks = [("train", t) for t in pools.train[:args.train]] + [("rl", t) for t in pools.rl[:args.rl]]
        # One untimed item first: the services' first requests pay for lazy imports and caches.
        await run_items(services, config, [("train", pools.train[-1])], workers=1, concurrency=1)
        pids = {name: stack.services[name].process.pid for name in ("student", "teacher")}
        log = stack.services["teacher"].log_path
        offset = log.stat().st_size
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        own_before = time.process_time()
        engine_before = engine_counters(stack.urls["student"])
        starts_before = {name: sandbox_starts(stack.urls[name]) for name in pids}
        load = os.getloadavg()
        print(f"measuring {len(tasks)} items", flush=True)
        started = time.perf_counter()
        results, timings, batchers = await run_items(services, config, tasks, workers=args.workers,
                                                     concurrency=args.concurrency)
        wall = time.perf_counter() - started
        steady = steady_rate(started, timings.finished)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()}
        cpu["bench (coordinator side)"] = round(time.process_time() - own_before, 1)
        teacher_ms = teacher_durations(log, offset)
        engine = {k: v - engine_before.get(k, 0.0) for k, v in engine_counters(stack.urls["student"]).items()}
        starts = {name: {k: v - starts_before[name].get(k, 0.0) for k, v in sandbox_starts(stack.urls[name]).items()}
                  for name in pids}
    finally:
        await services.close()
    outcomes: dict[str, int] = {}
    for result in results:
        outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
    batches = sum(b.batches for b in batchers)
    return {
        "code": str(ROOT),
        "items": len(results), "workers": args.workers, "concurrency": args.concurrency, "wall_s": round(wall, 1),
        "tasks_per_s": round(len(results) / wall, 3), "steady_tasks_per_s": steady, "loadavg_at_start": [round(x, 2) for x in load],
        "item_ms": {"p50": ms(timings.items), "p90": ms(timings.items, 0.9)},
        "rollouts": {"n": len(timings.rollouts), "p50_ms": ms(timings.rollouts), "p90_ms": ms(timings.rollouts, 0.9),
                     "sum_s": round(sum(timings.rollouts), 1)},
        "corrections": {"n": len(timings.corrections), "p50_ms": ms(timings.corrections),
                        "p90_ms": ms(timings.corrections, 0.9), "sum_s": round(sum(timings.corrections), 1),
                        "batches": batches, "teacher_sandbox_runs": sum(r["teacher_sandbox_runs"] for r in results),
                        "teacher_full_rollouts": sum(r["teacher_full_rollouts"] for r in results), "teacher_request_p50_ms": ms([d / 1000 for d in teacher_ms]),
                        "teacher_request_p90_ms": ms([d / 1000 for d in teacher_ms], 0.9)},
        "cpu_s": cpu, "engine": engine, "sandbox_starts": starts, "outcomes": outcomes, "cold_start": cold["job_id"], "results": results,
    }


def compare(result: dict, other_path: str) -> dict:
    other = {r["key"]: r for r in json.loads(Path(other_path).read_text())["results"]}
    fields = ("outcome", "repairs", "first_error_step", "final_answer", "student_tokens")
    differ = [r["key"] for r in result["results"] if r["key"] in other
              and any(r[f] != other[r["key"]][f] for f in fields)]
    return {"against": other_path, "same": sum(r["key"] in other for r in result["results"]) - len(differ),
            "differ": differ}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=64, help="train-pool tasks (the repair loop)")
    parser.add_argument("--rl", type=int, default=32, help="RL-pool tasks (one correction each)")
    parser.add_argument("--workers", type=int, default=2, help="coordinator workers (each its own batcher)")
    parser.add_argument("--concurrency", type=int, default=16, help="items per worker at once (run `concurrency`)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per model service (default: "
                        "as `score demo`, a third of the cores)")
    parser.add_argument("--home", default="/tmp/score-bench-mps", help="SCORE_HOME (the cold start is cached here)")
    parser.add_argument("--compare", default=None, help="another run's JSON: which items' outcomes differ")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "mps_stage.json"))
    args = parser.parse_args()

    config = RunConfig.model_validate(yaml.safe_load(DEMO.read_text()))
    home = bench_home(Path(args.home))
    stack = ServiceStack(home=home, ports=pick_ports(prefer_defaults=False),
                         extra_args={"teacher": ["--engine", "expert"]}, threads=args.threads)
    stack.start(["trainer", "teacher", "student"])
    try:
        result = asyncio.run(measure(stack, args, config))
    finally:
        stack.stop()
    if args.compare:
        result["compare"] = compare(result, args.compare)
    rows = [
        ("items (train + rl)", str(result["items"])),
        ("workers x concurrency", f"{args.workers} x {args.concurrency}"),
        ("wall s", f"{result['wall_s']:.1f}"),
        ("tasks/s", f"{result['tasks_per_s']:.3f}"),
        ("tasks/s steady (10%-90% done)", f"{result['steady_tasks_per_s']:.3f}"),
        ("item p50 / p90 ms", f"{result['item_ms']['p50']:.0f} / {result['item_ms']['p90']:.0f}"),
        ("rollouts n", str(result["rollouts"]["n"])),
        ("rollout p50 / p90 ms", f"{result['rollouts']['p50_ms']:.0f} / {result['rollouts']['p90_ms']:.0f}"),
        ("corrections n / batches", f"{result['corrections']['n']} / {result['corrections']['batches']}"),
        ("correction p50 / p90 ms", f"{result['corrections']['p50_ms']:.0f} / {result['corrections']['p90_ms']:.0f}"),
        ("teacher sandboxes / full rollouts",
         f"{result['corrections']['teacher_sandbox_runs']} / {result['corrections']['teacher_full_rollouts']}"),
        ("teacher request p50 ms", f"{result['corrections']['teacher_request_p50_ms']:.0f}"),
        ("items' time in rollouts", f"{result['rollouts']['sum_s'] / max(1e-9, sum_items(result)):.0%}"),
        *((f"cpu s {name}", f"{value:.1f}") for name, value in result["cpu_s"].items()),
        ("engine generated / prefill tokens",
         f"{result['engine'].get('generated_tokens', 0):.0f} / {result['engine'].get('prefill_tokens', 0):.0f}"),
        ("engine batches / joined requests",
         f"{result['engine'].get('batches', 0):.0f} / {result['engine'].get('joined_requests', 0):.0f}"),
        *((f"sandboxes {name} warm / cold", f"{got.get('warm', 0):.0f} / {got.get('cold', 0):.0f}")
          for name, got in result["sandbox_starts"].items() if got),
        ("load average at start", f"{result['loadavg_at_start'][0]:.2f}"),
        *((f"outcome {name}", str(n)) for name, n in sorted(result["outcomes"].items())),
    ]
    if "compare" in result:
        rows.append(("outcomes same / differ", f"{result['compare']['same']} / {len(result['compare']['differ'])}"))
    report(rows, result, args.out)


def sum_items(result: dict) -> float:
    return result["rollouts"]["sum_s"] + result["corrections"]["sum_s"]


if __name__ == "__main__":
    main()
