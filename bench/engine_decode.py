"""Engine decode throughput, slot KV cache against the legacy DynamicCache layout, side by side.

Two in-process engines on the built-in tiny student, `kv_cache="slots"` and `kv_cache="legacy"`, get the
same batches of seeded requests (batch 8 and 32, prompts of different lengths, different token budgets so
rows finish at different steps), alternating arm order every round so both see the same machine noise.
Per arm and batch size: generated tokens per second (prefill included; budgets are long enough that
decoding dominates), the same per CPU second of the process (less at the mercy of other jobs on a shared
machine), and whether both arms generated the same tokens.

    .venv/bin/python bench/engine_decode.py [--batches 8 32] [--max-tokens 128] [--repeats 3] [--threads 1]

Prints a table and writes bench/results/engine_decode.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.agent.tokens import chat_token_ids  # noqa: E402
from shared.models.builtin import ensure_builtin_model  # noqa: E402
from shared.models.transformers_engine import TransformersEngine  # noqa: E402
from shared.schemas.sampling import SamplingParams  # noqa: E402
from shared.tasks.builtin import builtin_tasks  # noqa: E402
from bench.report import report  # noqa: E402

ARMS = ("legacy", "slots")


def requests(tokenizer, batch: int, max_tokens: int) -> list[tuple[list[int], SamplingParams]]:
    tasks = builtin_tasks(split="eval", n=batch, seed=11)
    return [
        (chat_token_ids(tokenizer, [{"role": "user", "content": task.question}], add_generation_prompt=True),
         # Budgets from half to all of max_tokens: rows leave the batch at different steps, as in rollouts.
         SamplingParams(temperature=1.0, max_tokens=max_tokens // 2 + (i * max_tokens) // (2 * batch),
                        seed=1000 + i))
        for i, task in enumerate(tasks)
    ]


async def timed(engine: TransformersEngine, batch: list[tuple[list[int], SamplingParams]]) -> tuple[dict, list]:
    started, cpu_started = time.perf_counter(), time.process_time()
    outs = await asyncio.gather(*(engine.generate(ids, sampling) for ids, sampling in batch))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    tokens = sum(len(out.token_ids) for out in outs)
    # CPU seconds of this process as well: on a shared box, wall time mostly measures the neighbours.
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "tokens_per_cpu_s": tokens / cpu_seconds}, outs


async def main_async(args) -> dict:
    home = Path(os.environ.get("SCORE_HOME") or tempfile.mkdtemp(prefix="score-bench-"))
    model_dir = ensure_builtin_model("student", home)
    engines = {arm: TransformersEngine(str(model_dir), device="cpu", kv_cache=arm, max_batch_size=max(args.batches))
               for arm in ARMS}
    for engine in engines.values():
        await engine.start()
    tokenizer = engines["slots"].tokenizer
    batches = {size: requests(tokenizer, size, args.max_tokens) for size in args.batches}
    rounds: dict[str, dict[str, list[dict]]] = {str(size): {arm: [] for arm in ARMS} for size in args.batches}
    same: dict[str, list[int]] = {str(size): [] for size in args.batches}
    max_logprob_diff: dict[str, float] = {str(size): 0.0 for size in args.batches}
    try:
        for engine in engines.values():  # warm-up
            await timed(engine, batches[min(args.batches)][:2])
        for repeat in range(args.repeats):
            for size, batch in batches.items():
                order = ARMS if repeat % 2 == 0 else ARMS[::-1]
                outs = {}
                for arm in order:
                    measured, outs[arm] = await timed(engines[arm], batch)
                    rounds[str(size)][arm].append(measured)
                pairs = list(zip(outs["legacy"], outs["slots"]))
                same[str(size)].append(sum(a.token_ids == b.token_ids for a, b in pairs))
                for a, b in pairs:
                    if a.token_ids == b.token_ids and a.logprobs:
                        diff = max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs))
                        max_logprob_diff[str(size)] = max(max_logprob_diff[str(size)], diff)
    finally:
        for engine in engines.values():
            await engine.close()

    summary = {
        size: {arm: statistics.median(r["tokens_per_s"] for r in rounds[size][arm]) for arm in ARMS}
        for size in rounds
    }
    for size in summary:
        summary[size]["speedup"] = summary[size]["slots"] / summary[size]["legacy"]
        for arm in ARMS:
            summary[size][f"{arm}_per_cpu_s"] = statistics.median(r["tokens_per_cpu_s"] for r in rounds[size][arm])
        summary[size]["cpu_speedup"] = summary[size]["slots_per_cpu_s"] / summary[size]["legacy_per_cpu_s"]
    return {
        "config": vars(args), "threads": torch.get_num_threads(), "summary": summary, "rounds": rounds,
        "identical_outputs_per_round": same, "max_logprob_diff_identical_outputs": max_logprob_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the services run with one)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine_decode.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = asyncio.run(main_async(args))
    rows = [(f"batch, <= {args.max_tokens} tokens, {args.threads} thread(s)", "legacy | slots")]
    for size, arms in result["summary"].items():
        rows.append((f"batch {size}: decode tokens/s", f"{arms['legacy']:.0f} | {arms['slots']:.0f}"))
        rows.append((f"batch {size}: slots / legacy", f"{arms['speedup']:.2f}x"))
        rows.append((f"batch {size}: tokens per CPU second",
                     f"{arms['legacy_per_cpu_s']:.0f} | {arms['slots_per_cpu_s']:.0f}"))
        rows.append((f"batch {size}: slots / legacy per CPU second", f"{arms['cpu_speedup']:.2f}x"))
        rows.append((f"batch {size}: identical outputs per round",
                     f"{min(result['identical_outputs_per_round'][size])} of {size}"))
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
