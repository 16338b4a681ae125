"""Student rollouts with the engine's prefix cache on and off (or its two KV cache layouts): the same episodes,
side by side.

Two student services on the built-in tiny student, one with the prefix cache (`prefix_cache_mb` 512;
off by default) and one without (`SCORE_STUDENT_PREFIX_CACHE_MB=0`), get the same seeded `POST /v1/rollouts`
requests in interleaved rounds. With `--compare kv_cache` the two services differ in the decode loop's KV
cache instead (`SCORE_STUDENT_KV_CACHE` legacy against slots, the prefix cache at its default). Per arm: episodes/s, and prefill tokens per episode (the prompt tokens
that ran through the model, from the engine's counters) against the episode's length. The episodes
themselves must be token for token the same in both arms (seeded sampling does not depend on the cache).

    .venv/bin/python bench/student_rollouts.py [--items 16] [--n 4] [--max-turns 6] [--max-tokens 48] [--repeats 3]
        [--compare prefix_cache|kv_cache]

Prints a table and writes bench/results/student_rollouts.json (student_rollouts_kv_cache.json for kv_cache).
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
from bench.probes import cpu_seconds, engine_counters  # noqa: E402
from bench.report import report  # noqa: E402
from tests.service_process import ServiceProcess  # noqa: E402

# Per comparison, the baseline arm then the candidate, each with the environment of its service.
COMPARISONS = {
    "prefix_cache": {"cache_off": {"SCORE_STUDENT_PREFIX_CACHE_MB": "0"},
                     "cache_on": {"SCORE_STUDENT_PREFIX_CACHE_MB": "512"}},
    "kv_cache": {"legacy": {"SCORE_STUDENT_KV_CACHE": "legacy"}, "slots": {"SCORE_STUDENT_KV_CACHE": "slots"}},
}


def timed_round(url: str, pid: int, body: dict) -> tuple[dict, list[list[int]]]:
    before, cpu_before = engine_counters(url), cpu_seconds(pid)
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/rollouts", json=body, timeout=1800)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    after, cpu = engine_counters(url), cpu_seconds(pid) - cpu_before
    episodes = response.json()["episodes"]
    lengths = [len(e["token_ids"]) for e in episodes]
    delta = {k: after.get(k, 0.0) - v for k, v in before.items()}
    return {
        "seconds": seconds, "episodes": len(episodes), "episodes_per_s": len(episodes) / seconds,
        # The service's own CPU (all threads, sandboxes included): steadier than wall time on a shared box.
        "cpu_seconds": cpu, "episodes_per_cpu_s": len(episodes) / cpu if cpu else float("nan"),
        "model_turns": sum(len(e["steps"]) for e in episodes),
        "episode_tokens_mean": statistics.mean(lengths),
        "prefill_tokens_per_episode": delta.get("prefill_tokens", 0.0) / len(episodes),
        "cached_tokens_per_episode": delta.get("cached_tokens", 0.0) / len(episodes),
        "generated_tokens_per_episode": delta.get("generated_tokens", 0.0) / len(episodes),
    }, [e["token_ids"] for e in episodes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-turns", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="prefix_cache")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    suffix = "" if args.compare == "prefix_cache" else f"_{args.compare}"
    args.out = args.out or str(ROOT / "bench" / "results" / f"student_rollouts{suffix}.json")
    arms = COMPARISONS[args.compare]
    baseline, candidate = arms

    home = Path(os.environ.get("SCORE_HOME") or tempfile.mkdtemp(prefix="score-bench-"))
    ensure_builtin_model("student", home)
    # Fresh tasks every round (and for the warm-up): a repeated episode would find its whole self in the prefix
    # cache from the round before, and prefill per episode would measure that, not one episode's turns.
    pool = builtin_tasks(split="eval", n=args.items * (args.repeats + 1), seed=7)
    tasks = pool[: args.items]

    def round_body(r: int) -> dict:
        return {"items": [{"task": t.model_dump(mode="json")} for t in pool[r * args.items:(r + 1) * args.items]],
                "n": args.n, "max_turns": args.max_turns,
                "sampling": {"temperature": 1.0, "max_tokens": args.max_tokens, "seed": 0}}
    logs = Path(tempfile.mkdtemp())
    services = {
        # One torch thread each, as `score up` gives its services: two full thread pools on the same cores slow
        # each other several-fold, and the arms would measure that instead of the cache.
        arm: ServiceProcess("student", home=home, log_dir=logs,
                            env={**env, "OMP_NUM_THREADS": "1"})
        for arm, env in arms.items()
    }
    rounds: dict[str, list[dict]] = {arm: [] for arm in arms}
    same_episodes = []
    try:
        for service in services.values():
            service.wait_ready()
            warm_up = round_body(args.repeats)
            timed_round(service.url, service.process.pid, {**warm_up, "items": warm_up["items"][:2], "n": 1})
        for r in range(args.repeats):  # interleaved, so both arms see the same machine noise
            tokens = {}
            for arm, service in services.items():
                measured, tokens[arm] = timed_round(service.url, service.process.pid, round_body(r))
                rounds[arm].append(measured)
            same_episodes.append(sum(a == b for a, b in zip(tokens[baseline], tokens[candidate])))
    finally:
        for service in services.values():
            service.stop()

    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[arm])

    summary = {
        arm: {key: median(arm, key) for key in (
            "seconds", "episodes_per_s", "cpu_seconds", "episodes_per_cpu_s", "episode_tokens_mean",
            "prefill_tokens_per_episode", "cached_tokens_per_episode", "generated_tokens_per_episode", "model_turns")}
        for arm in arms
    }
    for arm in arms:
        summary[arm]["prefill_per_episode_length"] = (
            summary[arm]["prefill_tokens_per_episode"] / summary[arm]["episode_tokens_mean"])
    on, off = summary[candidate], summary[baseline]
    result = {
        "config": vars(args), "summary": summary, "rounds": rounds,
        "speedup_episodes_per_s": on["episodes_per_s"] / off["episodes_per_s"],
        "speedup_episodes_per_cpu_s": on["episodes_per_cpu_s"] / off["episodes_per_cpu_s"],
        "identical_episodes_per_round": same_episodes, "episodes_per_round": len(tasks) * args.n,
        "targets": ({"prefill_per_episode_length_with_cache": 1.2, "speedup_episodes_per_s": 2.0}
                    if args.compare == "prefix_cache" else {}),
    }
    report([
        (f"{args.items} tasks x n={args.n}, <= {args.max_turns} turns of <= {args.max_tokens} tokens",
         f"{baseline} | {candidate}"),
        ("round (s)", f"{off['seconds']:.2f} | {on['seconds']:.2f}"),
        ("episodes/s", f"{off['episodes_per_s']:.2f} | {on['episodes_per_s']:.2f}"),
        ("service CPU s per round", f"{off['cpu_seconds']:.2f} | {on['cpu_seconds']:.2f}"),
        ("episode length (tokens)", f"{off['episode_tokens_mean']:.0f} | {on['episode_tokens_mean']:.0f}"),
        ("prefill tokens per episode", f"{off['prefill_tokens_per_episode']:.0f} | {on['prefill_tokens_per_episode']:.0f}"),
        (f"prefill / episode length (target {candidate} <= 1.2)" if args.compare == "prefix_cache"
         else "prefill / episode length",
         f"{off['prefill_per_episode_length']:.2f} | {on['prefill_per_episode_length']:.2f}"),
        (f"episodes/s {candidate} / {baseline}" + (" (target >= 2)" if args.compare == "prefix_cache" else ""),
         f"{result['speedup_episodes_per_s']:.2f}"),
        (f"episodes per service CPU s, {candidate} / {baseline}", f"{result['speedup_episodes_per_cpu_s']:.2f}"),
        ("identical episodes per round", f"{min(same_episodes)} of {len(tasks) * args.n}"),
    ], result, args.out)


if __name__ == "__main__":
    main()
