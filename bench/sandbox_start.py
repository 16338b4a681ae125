"""Sandbox start and step cost: what one agent episode pays for its interpreter.

For each mode, starts `--episodes` sandboxes one after another and times the first `run()` (interpreter start
inside the boundary plus one trivial step), then a second trivial step and an `import json, re, datetime` step.
Modes: `bwrap` (the boundary, what services use) and `unconfined` (the development opt-out: the same
interpreter and in-process layers without bwrap), so the difference is the boundary's own cost.

    .venv/bin/python bench/sandbox_start.py [--episodes 20] [--modes bwrap unconfined]

Prints a table and writes bench/results/sandbox_start.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from shared.sandbox.limits import SandboxLimits  # noqa: E402
from shared.sandbox.report import sandbox_report  # noqa: E402
from shared.sandbox.sandbox import Sandbox  # noqa: E402

LIMITS = SandboxLimits(step_timeout_s=30.0)


def measure(mode: str, episodes: int) -> dict:
    first, step, imports = [], [], []
    for _ in range(episodes):
        with Sandbox(limits=LIMITS, unconfined=mode == "unconfined") as sandbox:
            started = time.perf_counter()
            assert sandbox.run("x = 1").status == "ok"
            first.append(time.perf_counter() - started)
            started = time.perf_counter()
            sandbox.run("x += 1")
            step.append(time.perf_counter() - started)
            started = time.perf_counter()
            sandbox.run("import json, re, datetime")
            imports.append(time.perf_counter() - started)
    ms = lambda values: round(1000 * statistics.median(values), 1)  # noqa: E731
    return {"start_and_first_step_ms": ms(first), "step_ms": ms(step), "stdlib_imports_ms": ms(imports)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["bwrap", "unconfined"], choices=["bwrap", "unconfined"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sandbox_start.json"))
    args = parser.parse_args()
    boundary = sandbox_report()
    result = {"episodes": args.episodes, "cpus": os.cpu_count(), "boundary_mode": boundary["mode"],
              "bwrap": boundary["bwrap"], "modes": {}}
    rows = []
    for mode in args.modes:
        if mode == "bwrap" and not boundary["ok"]:
            print(f"skipping bwrap: {boundary['problem']}")
            continue
        result["modes"][mode] = measured = measure(mode, args.episodes)
        rows += [(f"{mode}: {name} (median)", f"{value:.1f}") for name, value in measured.items()]
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
