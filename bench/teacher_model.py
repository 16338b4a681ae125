"""Held-out success of a model as the teacher: greedy agent episodes on built-in tasks, per family.

    .venv/bin/python bench/teacher_model.py                  # builtin:teacher-sft (built on first use: 15-30 min on one thread)
    .venv/bin/python bench/teacher_model.py --model DIR --n 50 --split eval --json out.json
    .venv/bin/python bench/teacher_model.py --via service   # through the teacher service's POST /v1/rollouts

Prints a table and writes bench/results/teacher_model.json (or --json).

Episodes run the way the teacher service runs them with its in-process engine: `TransformersEngine` and
`RolloutRunner` (greedy, 256 tokens a turn, 8 turns), code executed in the real sandbox (`--sandbox
inprocess` runs it with `exec` in this process instead: trusted model output only, for quick experiments).
Answers are scored with `shared.scoring`; intervals are Wilson 95% (`shared.stats.wilson`).

`--split train` measures on train-split tasks the build-time SFT of `teacher-sft` did not use (validation; with
`--model`, the tasks its `builtin.json` records; `--also-exclude DIR` leaves out another build's too, so recipes
are compared on the same tasks). `--failures -1` keeps every failing episode's turns and observations; kb failures are classified
(`kb_failure_kind`) and counted under `failure_kinds`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.agent.rollout import RolloutRunner  # noqa: E402
from shared.models.teacher_build import unused_train_tasks  # noqa: E402
from shared.models.transformers_engine import TransformersEngine  # noqa: E402
from shared.schemas.rollout import RolloutItem  # noqa: E402
from shared.schemas.sampling import SamplingParams  # noqa: E402
from shared.scoring import score_answer  # noqa: E402
from shared.stats import wilson  # noqa: E402
from shared.tasks.builtin import builtin_search_backend, builtin_tasks  # noqa: E402
from shared.tools.search import agent_tools  # noqa: E402

MAX_TURNS = 8
MAX_STEP_TOKENS = 256


class InProcessSandbox:
    """`exec` with the agent's tools and the sandbox's observation rules; no isolation at all."""

    def __init__(self, tools: dict) -> None:
        self.namespace: dict = dict(tools)
        self.answer: str | None = None

        def final_answer_print(value):
            self.answer = str(value)
            print(value)

        self.namespace["final_answer_print"] = final_answer_print

    def run(self, code: str):
        from shared.sandbox.sandbox import ExecResult

        self.answer = None
        out = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<cell>", "exec"), self.namespace)  # noqa: S102 - trusted experiments only
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        text = out.getvalue().rstrip("\n")
        if error:
            text = f"{text}\n{error}" if text else error
        return ExecResult(text or "Execution finished with no output.", self.answer, "error" if error else "ok", 0.0)

    def close(self) -> None:
        pass


_SEARCHED = re.compile(r'search\(\s*"([^"]*)"')


def kb_failure_kind(meta: dict, answer: str | None, steps: list[str]) -> str:
    """Why a failed kb episode failed, from the names it searched (in order) against the hops' entities.

    "name miscopied": a search for a name other than the next hop's entity (the model wrote it wrong);
    "no search in the first act turn": the episode broke down before any search (malformed text, usually
    starting at the question's name in the plan); "answered too early" / "one hop too many": every search
    right, but it answered an intermediate value or searched past the last hop (question kind confused);
    "wrong answer after the right searches"; "ran out of turns after the right searches"."""
    hops = meta["hops"]
    searched = [m.group(1).strip() for step in steps for m in _SEARCHED.finditer(step)]
    for i, hop in enumerate(hops):
        if i >= len(searched):
            break
        if searched[i] != hop["entity"]:
            return "name miscopied"
    right = min(len(searched), len(hops))
    if not searched:
        return "no search in the first act turn"
    if len(searched) > len(hops):
        return "one hop too many"
    if answer is not None and answer.strip() in [h["value"] for h in hops[:-1]]:
        return "answered too early"
    if answer is None:
        return f"ran out of turns after {right} right searches"
    return "wrong answer after the right searches"


def recorded_training_questions(model_dir: str) -> set[str]:
    """The questions a built-in model's SFT stages trained on (agent episodes and judge examples), from the
    settings its builtin.json records (empty if none)."""
    from shared.models.builtin import builtin_training_questions_of

    manifest = Path(model_dir) / "builtin.json"
    settings = ((json.loads(manifest.read_text()).get("sft") or {}).get("settings") if manifest.exists() else None)
    return builtin_training_questions_of(settings) if settings else set()


async def run_episodes(model_dir: str, tasks, *, sandbox: str = "real", max_batch_size: int = 32):
    from shared.sandbox.sandbox import Sandbox

    tools = agent_tools(builtin_search_backend())
    if sandbox == "real":
        factory = lambda: Sandbox(tools=tools)  # noqa: E731
    else:
        factory = lambda: InProcessSandbox(tools)  # noqa: E731
    engine = TransformersEngine(model_dir, device="cpu", max_batch_size=max_batch_size)
    await engine.start()
    try:
        runner = RolloutRunner(engine, factory, max_concurrent_episodes=max_batch_size, max_concurrent_executions=4)
        items = [RolloutItem(task=task) for task in tasks]
        sampling = SamplingParams(temperature=0.0, max_tokens=MAX_STEP_TOKENS)
        return await runner.run(items, n=1, max_turns=MAX_TURNS, sampling=sampling)
    finally:
        await engine.close()


def service_episodes(model_dir: str, tasks) -> list:
    """The same episodes through the teacher service's `POST /v1/rollouts` (its app in this process, configured as
    `score serve teacher --model DIR` configures it, greedy, 256 tokens a turn), so what a client gets is measured."""
    from fastapi.testclient import TestClient

    from services.teacher.app import create_app
    from services.teacher.config import TeacherConfig
    from shared.schemas.teacher import TeacherRolloutResponse
    from shared.settings import Settings

    config = TeacherConfig(engine="transformers", model=model_dir, device="cpu", max_step_tokens=MAX_STEP_TOKENS,
                           settings=Settings(home=Path(tempfile.mkdtemp(prefix="score-bench-"))))
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/rollouts", json={"items": [{"task": t.model_dump(mode="json")} for t in tasks],
                                                     "max_turns": MAX_TURNS})
        response.raise_for_status()
    return [e.to_episode() for e in TeacherRolloutResponse.model_validate(response.json()).episodes]


def success(model_dir: str, tasks, *, sandbox: str = "real", keep_failures: int = 5, via: str = "engine") -> dict:
    """Solved share of `tasks` with the greedy teacher: successes, n, rate, 95% interval, seconds, per-task
    outcomes (task id -> 0/1, in the tasks' order), and the first `keep_failures` failing episodes (each model
    turn's text and its observation; -1 keeps them all)."""
    started = time.perf_counter()
    episodes = (service_episodes(model_dir, tasks) if via == "service"
                else asyncio.run(run_episodes(model_dir, tasks, sandbox=sandbox)))
    solved, failures, kinds, outcomes = 0, [], Counter(), {}
    for task, episode in zip(tasks, episodes):
        correct = score_answer(episode.final_answer, task.true_answer).correct
        outcomes[task.id] = int(correct)
        if correct:
            solved += 1
            continue
        steps = episode.steps[episode.n_prefix_steps:]
        raw = [s.raw or "" for s in steps]
        kind = kb_failure_kind(task.meta, episode.final_answer, raw) if task.family == "kb" else None
        if kind:
            kinds[kind] += 1
        if keep_failures < 0 or len(failures) < keep_failures:
            failures.append({"question": task.question, "answer": episode.final_answer,
                             "true_answer": task.true_answer, "stop_reason": episode.stop_reason,
                             **({"kind": kind} if kind else {}), "steps": raw,
                             "observations": [s.observation for s in steps]})
    low, high = wilson(solved, len(tasks))
    return {"solved": solved, "n": len(tasks), "success": round(solved / max(1, len(tasks)), 4),
            "ci95": [round(low, 4), round(high, 4)], "seconds": round(time.perf_counter() - started, 1),
            **({"failure_kinds": dict(kinds.most_common())} if kinds else {}), "outcomes": outcomes,
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: builtin:teacher-sft, built if needed)")
    parser.add_argument("--split", choices=("eval", "train"), default="eval",
                        help="eval: held-out tasks; train: train-split tasks the built-in SFT did not use")
    parser.add_argument("--n", type=int, default=50, help="tasks per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sandbox", choices=("real", "inprocess"), default="real")
    parser.add_argument("--via", choices=("engine", "service"), default="engine",
                        help="engine: the in-process engine and RolloutRunner; service: the teacher service's "
                             "POST /v1/rollouts (its app in this process)")
    parser.add_argument("--families", default="arith,kb", help="comma-separated task families to run")
    parser.add_argument("--failures", type=int, default=5,
                        help="failing episodes kept per family in the JSON, every turn and observation (-1: all)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "teacher_model.json"),
                        help="write the results here")
    parser.add_argument("--also-exclude", action="append", default=[], metavar="DIR",
                        help="with --split train, also leave out the tasks the build in DIR trained on (its "
                             "builtin.json), so several recipes are compared on the same tasks; repeatable")
    args = parser.parse_args()
    torch.set_num_threads(1)

    build_seconds = None
    if args.model:
        model_dir = args.model
    else:
        from shared.models.builtin import ensure_builtin_model

        started = time.perf_counter()
        model_dir = str(ensure_builtin_model("teacher-sft"))
        manifest = json.loads((Path(model_dir) / "builtin.json").read_text())
        build_seconds = manifest.get("build_seconds")
        print(f"builtin:teacher-sft at {model_dir} (build {build_seconds}s; ready in "
              f"{time.perf_counter() - started:.1f}s)")
    # Validation leaves out what this build (and any --also-exclude build) trained on, as its manifest records.
    trained: set[str] = set()
    if args.split == "train":
        for directory in (model_dir, *args.also_exclude):
            trained |= recorded_training_questions(directory)
    results = {"model": model_dir, "split": args.split, "build_seconds": build_seconds, "families": {}}
    print(f"{'family':<8}{'solved':>8}{'n':>5}{'success':>9}  95% interval   seconds")
    for family in args.families.split(","):
        if args.split == "eval":
            tasks = builtin_tasks(family=family, split="eval", n=args.n, seed=args.seed)
        else:
            tasks = unused_train_tasks(family, args.n, exclude=trained, seed=101 + args.seed)
        row = success(model_dir, tasks, sandbox=args.sandbox, keep_failures=args.failures, via=args.via)
        results["families"][family] = row
        print(f"{family:<8}{row['solved']:>8}{row['n']:>5}{row['success']:>9.1%}  "
              f"[{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]  {row['seconds']:>8}")
        for kind, count in row.get("failure_kinds", {}).items():
            print(f"  failed, {kind}: {count}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
