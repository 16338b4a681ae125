"""Student rollouts: agent episodes per second through the service, and where the time goes.

Runs built-in tasks through `POST /v1/rollouts` on the built-in tiny student
(untrained: it mostly writes malformed turns, which still exercises generation,
parsing and the sandbox each turn), then the same number of expert prefixes
replayed with `max_turns: 0` (sandbox only, no model), side by side.

    .venv/bin/python bench/student_rollouts.py [--items 16] [--n 4] [--max-turns 4] [--max-tokens 64]

Prints a table and writes bench/results/student_rollouts.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.models.builtin import ensure_builtin_model  # noqa: E402
from shared.tasks.builtin import builtin_tasks  # noqa: E402
from shared.tasks.expert import expert_steps  # noqa: E402
from bench.report import report  # noqa: E402
from tests.service_process import ServiceProcess  # noqa: E402


def timed_post(url: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/rollouts", json=body, timeout=1200)
    response.raise_for_status()
    return time.perf_counter() - started, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "student_rollouts.json"))
    args = parser.parse_args()

    home = Path(os.environ.get("SCORE_HOME") or tempfile.mkdtemp(prefix="score-bench-"))
    ensure_builtin_model("student", home)
    tasks = builtin_tasks(split="eval", n=args.items, seed=7)
    model_body = {
        "items": [{"task": t.model_dump(mode="json")} for t in tasks], "n": args.n, "max_turns": args.max_turns,
        "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens, "seed": 0},
    }
    replay_items = [
        {"task": t.model_dump(mode="json"), "prefix_steps": [s.model_dump() for s in expert_steps(t)]} for t in tasks
    ]
    replay_body = {"items": replay_items * args.n, "max_turns": 0}

    service = ServiceProcess("student", home=home, log_dir=Path(tempfile.mkdtemp()))
    try:
        service.wait_ready()
        timed_post(service.url, {**model_body, "items": model_body["items"][:2], "n": 1})  # warm-up
        model_rounds, replay_rounds = [], []
        for _ in range(args.repeats):
            seconds, data = timed_post(service.url, model_body)
            episodes = data["episodes"]
            model_rounds.append({
                "seconds": seconds, "episodes": len(episodes),
                "model_turns": sum(len(e["steps"]) for e in episodes),
                "generated_tokens": sum(sum(e["loss_mask"]) for e in episodes),
                "total_tokens": sum(len(e["token_ids"]) for e in episodes),
            })
            seconds, data = timed_post(service.url, replay_body)
            replay_rounds.append({
                "seconds": seconds, "episodes": len(data["episodes"]),
                "executed_steps": sum(len(e["steps"]) - 1 for e in data["episodes"]),
                "solved": sum(bool(e["finished"]) for e in data["episodes"]),
            })
    finally:
        service.stop()

    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    result = {
        "config": vars(args),
        "model_rollouts": {
            "episodes_per_s": statistics.median(r["episodes"] / r["seconds"] for r in model_rounds),
            "model_turns_per_s": statistics.median(r["model_turns"] / r["seconds"] for r in model_rounds),
            "generated_tokens_per_s": statistics.median(r["generated_tokens"] / r["seconds"] for r in model_rounds),
            "seconds": median(model_rounds, "seconds"), "rounds": model_rounds,
        },
        "prefix_replays": {
            "episodes_per_s": statistics.median(r["episodes"] / r["seconds"] for r in replay_rounds),
            "executed_steps_per_s": statistics.median(r["executed_steps"] / r["seconds"] for r in replay_rounds),
            "seconds": median(replay_rounds, "seconds"), "rounds": replay_rounds,
        },
    }
    m, r = result["model_rollouts"], result["prefix_replays"]
    report([
        (f"model rollouts: {args.items} items x n={args.n}, {args.max_turns} turns (s)", f"{m['seconds']:.2f}"),
        ("  episodes/s", f"{m['episodes_per_s']:.2f}"),
        ("  model turns/s", f"{m['model_turns_per_s']:.2f}"),
        ("  generated tokens/s", f"{m['generated_tokens_per_s']:.1f}"),
        ("expert prefix replays, same episode count (s)", f"{r['seconds']:.2f}"),
        ("  episodes/s (sandbox start + steps, no model)", f"{r['episodes_per_s']:.2f}"),
        ("  executed steps/s", f"{r['executed_steps_per_s']:.2f}"),
    ], result, args.out)


if __name__ == "__main__":
    main()
