"""Teacher corrections: how fast, how costly and how accurate the first-critical-error search is.

Builds built-in tasks (both families) whose expert trajectory has one act step deliberately broken at a
known position (wrong operand or operator, wrong entity searched, wrong final answer), sends them to a real
`score serve teacher --engine expert` process with `verify` and then `judge` — and `verify` once more with
every step's code restyled (other variable names, same effects), which makes the teacher execute and compare
its own step at each prefix instead of recognising its own code — and reports corrections/s,
full teacher rollouts, teacher tokens and sandboxes per correction, and how often the broken position was
found, and how often the corrected step is a drop-in repair: the verified prefix, the corrected step and the gold
trajectory's steps after it (what a student that went on correctly writes), replayed in the real sandbox, reach the
gold answer. `verify` runs with the default `verify_window` (1: prefix by prefix, stopping at the first critical
error) and again with 0 (every prefix proposed in one call), side by side. A second, smaller round runs `verify`
and `judge` on a built-in teacher model in-process, on broken trajectories of held-out (eval-split) tasks: the
untrained tiny `teacher` (it mostly writes malformed steps, so its corrections are mostly `hard`) or the
fine-tuned `teacher-sft`, whose build trains on broken train-split trajectories (`--model-split train` uses
train-split tasks its build did not use instead: validation, for choosing a recipe). Nothing is asserted; the
numbers are reported.

    .venv/bin/python bench/teacher_corrections.py [--items 200] [--model-items 4] [--model-max-tokens 64]
        [--model-role teacher|teacher-sft]   # teacher-sft: the fine-tuned teacher (built on first use)
        [--model-split eval|train]           # train: validation tasks its build did not use

Prints a table and writes bench/results/teacher_corrections.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.models.builtin import ensure_builtin_model  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.tasks.builtin import builtin_tasks  # noqa: E402
from shared.tasks.expert import broken_trajectory  # noqa: E402
from bench.report import report  # noqa: E402
from tests.service_process import ServiceProcess  # noqa: E402


def broken_items(n: int, seed: int, restyle: bool = False, split: str = "train", tasks: list | None = None
                 ) -> tuple[list[dict], list[int], list[str]]:
    """`n` built-in tasks of `split` (or the given `tasks`), each with one act step broken (draw `seed`)."""
    rng = random.Random(seed)
    items, positions, kinds = [], [], []
    for task in tasks if tasks is not None else builtin_tasks(n=n, seed=seed, split=split):
        steps, position, what = broken_trajectory(task, rng, restyle=restyle)
        items.append({"task": task.model_dump(mode="json"), "steps": [s.model_dump(mode="json") for s in steps]})
        positions.append(position)
        kinds.append(f"{task.family}: {what}")
    return items, positions, kinds


def replay_reaches_gold(items: list[dict], corrections: list[dict]) -> list[bool]:
    """Per item: prefix + corrected step + the gold steps after it, replayed in a sandbox, give the gold answer."""
    from shared.agent.execute import replay_steps
    from shared.sandbox.sandbox import Sandbox
    from shared.schemas.agent import Step, Task
    from shared.scoring import score_answer
    from shared.tasks.expert import expert_steps
    from shared.tasks.gold import builtin_tools

    reached = []
    for item, correction in zip(items, corrections):
        k = correction["first_error_step"]
        if correction["hard"] or k is None or correction.get("corrected_step") is None:
            reached.append(False)
            continue
        task = Task.model_validate(item["task"])
        prefix = [Step.model_validate(s) for s in item["steps"][:k]]
        steps = [*prefix, Step.model_validate(correction["corrected_step"]), *expert_steps(task)[k + 1:]]
        with Sandbox(tools=builtin_tools()) as sandbox:
            _, final = replay_steps(steps, sandbox)
        reached.append(final is not None and score_answer(final, task.true_answer).correct)
    return reached


def summarise(body: dict, seconds: float, positions: list[int], kinds: list[str], items: list[dict]) -> dict:
    corrections = body["corrections"]
    n = len(corrections)
    found = [c["first_error_step"] == p for c, p in zip(corrections, positions)]
    reached = replay_reaches_gold(items, corrections)
    by_kind: dict[str, list[int]] = {}
    for kind, hit in zip(kinds, found):
        by_kind.setdefault(kind, []).append(int(hit))
    cost = body["cost"]
    return {
        "items": n, "seconds": seconds, "corrections_per_s": n / seconds,
        "position_accuracy": sum(found) / n, "hard": sum(c["hard"] for c in corrections),
        "replay_reaches_gold": sum(reached) / n,
        "found_and_replay_reaches_gold": sum(f and r for f, r in zip(found, reached)) / n,
        "full_rollouts_per_correction": cost["full_rollouts"] / n,
        "teacher_calls_per_correction": cost["teacher_calls"] / n,
        "teacher_tokens_per_correction": cost["teacher_tokens"] / n,
        "teacher_prompt_tokens_per_correction": cost["teacher_prompt_tokens"] / n,
        "sandbox_runs_per_correction": cost["sandbox_runs"] / n,
        "accuracy_by_break": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        "cost": cost,
    }


def expert_round(home: Path, n: int, seed: int, verify_window: int = 1) -> dict:
    """Both strategies on trajectories as the expert writes them, and `verify` on restyled ones."""
    rounds = [("verify", False), ("judge", False), ("verify restyled", True)]
    if verify_window != 1:  # the side-by-side run: only `verify` changes with the window
        rounds = [("verify", False), ("verify restyled", True)]
    service = ServiceProcess("teacher", "--engine", "expert", home=home, log_dir=Path(tempfile.mkdtemp()),
                             env={"SCORE_TEACHER_VERIFY_WINDOW": str(verify_window)})
    results = {}
    try:
        service.wait_ready()
        items, _, _ = broken_items(2, seed)
        httpx.post(f"{service.url}/v1/corrections", json={"items": items}, timeout=600)  # warm-up
        for name, restyle in rounds:
            items, positions, kinds = broken_items(n, seed, restyle=restyle)
            started = time.perf_counter()
            response = httpx.post(f"{service.url}/v1/corrections", timeout=1800,
                                  json={"items": items, "strategy": name.split()[0]})
            response.raise_for_status()
            results[name] = summarise(response.json(), time.perf_counter() - started, positions, kinds, items)
    finally:
        service.stop()
    return results


def model_round(home: Path, items, positions, kinds, max_tokens: int, role: str = "teacher",
                model_dir: str | None = None) -> dict:
    from fastapi.testclient import TestClient

    from services.teacher.app import create_app
    from services.teacher.config import TeacherConfig

    config = TeacherConfig(engine="transformers", model=model_dir or str(ensure_builtin_model(role, home)),
                           settings=Settings(home=home), max_step_tokens=max_tokens,
                           max_judge_tokens=max_tokens * 2)
    results = {}
    with TestClient(create_app(config)) as client:
        for strategy in ("verify", "judge"):
            started = time.perf_counter()
            response = client.post("/v1/corrections", json={"items": items, "strategy": strategy})
            response.raise_for_status()
            results[strategy] = summarise(response.json(), time.perf_counter() - started, positions, kinds, items)
    return results


def validation_tasks(args, home: Path) -> list | None:
    """With `--model-split train`: train-split tasks, half of each family, that the model's build did not use."""
    if args.model_split != "train":
        return None
    from bench.teacher_model import recorded_training_questions
    from shared.models.teacher_build import unused_train_tasks

    trained = recorded_training_questions(args.model_dir or str(ensure_builtin_model(args.model_role, home)))
    half = args.model_items // 2
    return [task for family, n in (("arith", half), ("kb", args.model_items - half))
            for task in unused_train_tasks(family, n, exclude=trained, seed=args.seed + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200, help="broken trajectories for the expert round")
    parser.add_argument("--model-items", type=int, default=4, help="broken trajectories for the tiny-model round (0: skip)")
    parser.add_argument("--model-max-tokens", type=int, default=64, help="token budget of one teacher model turn")
    parser.add_argument("--model-role", default="teacher", choices=("teacher", "teacher-sft"),
                        help="built-in model of the model round: the untrained tiny teacher or the fine-tuned one")
    parser.add_argument("--model-dir", help="the model round's model directory instead of --model-role's build")
    parser.add_argument("--model-split", choices=("eval", "train"), default="eval",
                        help="tasks of the model round: eval (held-out) or train-split tasks the model's build did "
                             "not train on (validation, as its builtin.json records; half of each family)")
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "teacher_corrections.json"))
    args = parser.parse_args()

    home = Path(os.environ.get("SCORE_HOME") or tempfile.mkdtemp(prefix="score-bench-"))
    result = {"config": vars(args), "expert": expert_round(home, args.items, args.seed)}
    # The same items with every prefix proposed in one call (verify_window 0), for the spend the window saves.
    for name, r in expert_round(home, args.items, args.seed, verify_window=0).items():
        result["expert"][f"{name}, window 0"] = r
    if args.model_items:
        # Held-out tasks by default: the teacher model's build trains on (broken) train-split trajectories.
        m_items, m_positions, m_kinds = broken_items(args.model_items, args.seed + 1, split="eval",
                                                     tasks=validation_tasks(args, home))
        result["tiny_model"] = model_round(home, m_items, m_positions, m_kinds, args.model_max_tokens,
                                           args.model_role, args.model_dir)

    rows = []
    for backend, strategies in (("expert", result["expert"]), ("tiny model", result.get("tiny_model", {}))):
        for strategy, r in strategies.items():
            rows += [
                (f"{backend} {strategy}: {r['items']} broken trajectories (s)", f"{r['seconds']:.2f}"),
                ("  corrections/s", f"{r['corrections_per_s']:.2f}"),
                ("  position accuracy", f"{r['position_accuracy']:.3f}"),
                ("  replay with the gold continuation reaches gold", f"{r['replay_reaches_gold']:.3f}"),
                ("  hard", f"{r['hard']}"),
                ("  full teacher rollouts / correction", f"{r['full_rollouts_per_correction']:.2f}"),
                ("  teacher calls / correction", f"{r['teacher_calls_per_correction']:.2f}"),
                ("  teacher tokens / correction (generated)", f"{r['teacher_tokens_per_correction']:.1f}"),
                ("  teacher prompt tokens / correction", f"{r['teacher_prompt_tokens_per_correction']:.1f}"),
                ("  sandboxes / correction", f"{r['sandbox_runs_per_correction']:.2f}"),
            ]
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
