"""Built-in task generation and sandbox start-up: the two costs every run pays before any model work.

- task generation: `builtin_tasks(n=2000)` after the knowledge base is built once per process (the coordinator
  draws every stage's tasks this way); the median of `--repeats` timings, and the one-time world build;
- sandbox start-up: open a Sandbox (interpreter start, isolation layers), read its layers, close it; the median
  of `--repeats`.

These were timed assertions in the test suite (0.5 s and 1 s limits), which failed at random on a loaded box;
here they are measured and reported instead.

    .venv/bin/python bench/task_generation.py [--tasks 2000] [--repeats 5]

Prints a table and writes bench/results/task_generation.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import report  # noqa: E402
from shared.sandbox.limits import SandboxLimits  # noqa: E402
from shared.sandbox.sandbox import Sandbox  # noqa: E402
from shared.tasks import kb  # noqa: E402
from shared.tasks.builtin import builtin_tasks  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per generation")
    parser.add_argument("--repeats", type=int, default=5, help="timings per measure (the median is reported)")
    parser.add_argument("--out", default="bench/results/task_generation.json")
    args = parser.parse_args()

    world_s = timed(kb.all_questions)  # built once per process; what follows times the generation itself
    generation = [timed(lambda: builtin_tasks(n=args.tasks, seed=9)) for _ in range(args.repeats)]

    def sandbox_cycle() -> None:
        with Sandbox(limits=SandboxLimits(step_timeout_s=10.0)) as sandbox:
            sandbox.isolation

    startup = [timed(sandbox_cycle) for _ in range(args.repeats)]
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "tasks": args.tasks, "repeats": args.repeats,
        "world_build_s": world_s,
        "generation_s": generation, "generation_median_s": statistics.median(generation),
        "sandbox_startup_s": startup, "sandbox_startup_median_s": statistics.median(startup),
    }
    report([
        ("knowledge base build (once) s", f"{world_s:.3f}"),
        (f"generate {args.tasks} tasks, median s", f"{result['generation_median_s']:.3f}"),
        ("sandbox open+close, median s", f"{result['sandbox_startup_median_s']:.3f}"),
    ], result, args.out)


if __name__ == "__main__":
    main()
