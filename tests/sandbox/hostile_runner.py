"""Run the hostile and benign suites against the library sandbox and report, in whatever configuration this
process is in (root, an unprivileged uid, a container). Used by tests/sandbox/test_sandbox.py and, as a script,
by the unprivileged-user test and scripts/sandbox_container_check.sh:

    python -m tests.sandbox.hostile_runner [--only NAME ...]     # exit status 1 when a case is not contained

Stdlib plus the project's sandbox package only, so it also runs under a bare interpreter in a container.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.sandbox.limits import SandboxLimits  # noqa: E402
from shared.sandbox.report import sandbox_report  # noqa: E402
from shared.sandbox.sandbox import Sandbox  # noqa: E402
from tests.sandbox.hostile_snippets import (  # noqa: E402
    BENIGN_CASES,
    ESCAPED_MARK,
    HOSTILE_CASES,
    TIMED_OUT,
    BenignCase,
    HostileCase,
)

FAST = SandboxLimits(step_timeout_s=1.5)      # for steps that are meant to time out
ROOMY = SandboxLimits(step_timeout_s=10.0)    # for steps that finish: never flaky on a loaded box
SLOW_CASES = frozenset({case.name for case in HOSTILE_CASES if case.expect == TIMED_OUT}
                       | {"cpu_rlimit", "control_pipe_forged_result"})
# Per-case limits and sharper expectations than the host-agnostic ones in hostile_snippets.
CASE_LIMITS = {"cpu_rlimit": SandboxLimits(step_timeout_s=10.0, cpu_time_s=1)}   # roomy: loaded CI boxes
SHARPER_EXPECT = {"cpu_rlimit": ("cpu time limit",)}


def limits_for(case: HostileCase) -> SandboxLimits:
    return CASE_LIMITS.get(case.name, FAST if case.name in SLOW_CASES else ROOMY)


def hostile_problems(case: HostileCase, observation: str, final_answer: str | None, after: tuple[str, str],
                     secret: str | None = None) -> list[str]:
    """Why `observation` (and the follow-up step `after` = (observation, status)) is not contained."""
    text = observation.lower()
    expect = SHARPER_EXPECT.get(case.name, case.expect)
    problems = []
    if not any(phrase in text for phrase in expect):
        problems.append(f"expected one of {expect}")
    if ESCAPED_MARK in text:
        problems.append("something escaped")
    if "traceback" in text or "_sandbox_child" in text:
        problems.append("internals in the observation")
    if final_answer is not None:
        problems.append(f"a final answer {final_answer!r}")
    if secret and secret in observation:
        problems.append("the secret leaked")
    if after != ("2", "ok"):
        problems.append(f"the next step gave {after!r} instead of '2'")
    return problems


def run_hostile(case: HostileCase, secret: str | None = None, **sandbox_kwargs) -> tuple[str, list[str]]:
    with Sandbox(limits=limits_for(case), **sandbox_kwargs) as sandbox:
        result = sandbox.run(case.code)
        after = sandbox.run("print(1 + 1)")
    return result.observation, hostile_problems(case, result.observation, result.final_answer,
                                                (after.observation, after.status), secret)


def run_benign(case: BenignCase, **sandbox_kwargs) -> tuple[str, list[str]]:
    with Sandbox(limits=ROOMY, **sandbox_kwargs) as sandbox:
        result = sandbox.run(case.code)
    problems = [] if (result.observation, result.status) == (case.observation, "ok") else [
        f"expected {case.observation!r}"]
    return result.observation, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = parser.parse_args(argv)
    report = sandbox_report()
    print(json.dumps({"sandbox": report}), flush=True)
    if not report["ok"]:
        return 2
    failures = 0
    started = time.monotonic()
    cases = [*HOSTILE_CASES, *BENIGN_CASES]
    for case in cases:
        if args.only and case.name not in args.only:
            continue
        observation, problems = (run_hostile(case) if isinstance(case, HostileCase) else run_benign(case))
        failures += bool(problems)
        print(json.dumps({"case": case.name, "contained": not problems, "problems": problems,
                          "observation": observation[:300]}), flush=True)
    print(json.dumps({"cases": len(cases), "failures": failures, "seconds": round(time.monotonic() - started, 1)}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
