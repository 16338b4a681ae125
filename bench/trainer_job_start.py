"""SFT job start latency: a training process forked by the warm launcher vs a fresh Python process per job.

Two `JobManager`s (what the trainer service runs), one with `warm_start` and one without, in one event loop,
take turns with the same tiny job (the built-in student, `--steps` optimizer steps on a few short
conversations, one thread), so both sides see the same machine load. Per job, from submission (`create`):

- process: the job turns `running` (the process was started or forked);
- started: the training process's `started` record (imports, tokenizer, model loaded, schedule built);
- first step: its first `progress` record;
- published: its `published` record (the checkpoint is written);
- done: the service sees the job `succeeded` (the process exited: a fresh interpreter's teardown takes
  seconds, a forked child leaves with `os._exit`).

The warm side's first job also waits for the launcher's own imports (it starts with the first job); it is
reported on its own, and the medians are over the jobs after it (the plain side: all jobs).

    .venv/bin/python bench/trainer_job_start.py [--jobs 5] [--steps 2]

Prints a table and writes bench/results/trainer_job_start.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = [{"messages": [{"role": "user", "content": f"Compute {i} + {i + 2}."},
                      {"role": "assistant", "content": f"The sum is {2 * i + 2}."}]} for i in range(16)]


async def run_job(manager, steps: int) -> dict:
    from shared.schemas.training import JobRequest, JobState
    from services.trainer.sft.spec import PROGRESS

    request = JobRequest.model_validate({"dataset": {"rows": ROWS}, "hyperparameters": {
        "max_steps": steps, "cpu_threads": 1, "micro_batch_tokens": 256, "max_seq_length": 256}})
    submitted = time.time()
    info, _ = manager.create(request)
    job = manager.jobs[info.id]
    while job.info.state not in (JobState.succeeded, JobState.failed):
        await asyncio.sleep(0.02)
    done = time.time()
    if job.info.state != JobState.succeeded:
        raise RuntimeError(f"job {info.id} failed: {job.info.error}")
    records = [json.loads(line) for line in (job.dir / PROGRESS).read_text().splitlines()]
    running = next(e for e in job.events() if e.type == "state" and e.state == JobState.running)
    first = lambda kind: next(r["time"] for r in records if r["type"] == kind)  # noqa: E731
    return {"process_s": running.time - submitted, "started_s": first("started") - submitted,
            "first_step_s": first("progress") - submitted, "published_s": first("published") - submitted,
            "done_s": done - submitted,
            "warm": "warm launcher" in (running.message or "")}


async def bench(home: Path, jobs: int, steps: int) -> dict:
    from services.trainer.sft.jobs import JobManager

    managers = {
        name: JobManager(jobs_dir=home / "trainer" / name, home=home, checkpoints_dir=home / "checkpoints",
                         poll_interval_s=0.05, device="cpu", warm_start=name == "warm")
        for name in ("plain", "warm")
    }
    for manager in managers.values():
        await manager.start()
    runs: dict[str, list[dict]] = {"plain": [], "warm": []}
    try:
        for index in range(jobs):
            order = ("plain", "warm") if index % 2 == 0 else ("warm", "plain")
            for name in order:
                runs[name].append(await run_job(managers[name], steps))
                print(name, index, {k: round(v, 2) if isinstance(v, float) else v for k, v in runs[name][-1].items()},
                      flush=True)
    finally:
        for manager in managers.values():
            await manager.close()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per side (the warm side's first one is apart)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per job")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "trainer_job_start.json"))
    args = parser.parse_args()
    if args.jobs < 2:
        parser.error("--jobs must be at least 2 (the warm side's first job is reported apart)")

    from bench.report import report
    from shared.models.builtin import ensure_builtin_model

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / "models").mkdir(parents=True)
        source = Path(os.environ.get("SCORE_HOME") or Path.home() / ".score")
        ensure_builtin_model("student", source)
        (home / "models" / "builtin").symlink_to(source / "models" / "builtin")
        runs = asyncio.run(bench(home, args.jobs, args.steps))

    if not all(r["warm"] for r in runs["warm"]) or any(r["warm"] for r in runs["plain"]):
        raise SystemExit("a warm job started fresh or a plain one warm: the comparison does not hold")
    keys = ("process_s", "started_s", "first_step_s", "published_s", "done_s")
    plain = {k: statistics.median(r[k] for r in runs["plain"]) for k in keys}
    warm = {k: statistics.median(r[k] for r in runs["warm"][1:]) for k in keys}
    first = runs["warm"][0]
    result = {"jobs_per_side": args.jobs, "steps": args.steps, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "runs": runs, "median_plain": plain,
              "median_warm_after_first": warm, "warm_first_job": first,
              "speedup_started": plain["started_s"] / warm["started_s"]}
    rows = []
    for key, label in zip(keys, ("submit -> process", "submit -> started", "submit -> first step",
                                   "submit -> published", "submit -> done")):
        rows += [(f"{label}, plain", f"{plain[key]:.2f} s"), (f"{label}, warm", f"{warm[key]:.2f} s")]
    rows += [("submit -> started, warm 1st job", f"{first['started_s']:.2f} s"),
             ("started: plain / warm", f"{result['speedup_started']:.1f}x")]
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
