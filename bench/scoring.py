"""Per-call cost of answer scoring: math-verify in the calling thread (unbounded) against the bounded scorer.

The bounded path decides plain numbers in the caller (no parser) and sends everything else to a scorer
process over a pipe; results are cached, so the measured calls use a pool without cache (every call pays).
Each case is scored `--calls` times after a warm-up; the table shows microseconds per call.

    .venv/bin/python bench/scoring.py [--calls 200]

Prints a table and writes bench/results/scoring.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from shared import scoring, scoring_pool  # noqa: E402
from shared.scoring_pool import ScorerPool  # noqa: E402

CASES = [  # (label, prediction, gold): what rollouts and rewards score most
    ("integer, equal", "989", 989),
    ("integer, different", "988", 989),
    ("decimal vs integer", "989.0", 989),
    ("boxed LaTeX", "\\boxed{989}", 989),
    ("fraction vs decimal", "0.5", "1/2"),
    ("text answer", "The Quorland Republic", "Quorland"),
]


def unbounded(prediction, gold):
    """The scoring as it was: exact match, else math-verify in the calling thread for math-looking golds."""
    prediction, gold = str(prediction), scoring._gold_strings(gold)[0]
    if not scoring.is_math_answer(gold):
        return scoring.normalize_answer(prediction) == scoring.normalize_answer(gold)
    if prediction.strip() == gold.strip():
        return True
    return len(prediction) <= scoring.MAX_MATH_CHARS and scoring.math_verify_equal(prediction, gold)


def per_call_us(fn, calls: int) -> float:
    fn()  # warm-up: imports, grammars, the scorer process
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "scoring.json"))
    args = parser.parse_args()
    pool = ScorerPool(workers=1, cache_size=0)
    scoring_pool._pool = pool  # the bounded path uses this pool: no cache, so every call pays
    rows, result = [], {"calls": args.calls, "cases": {}}
    try:
        for label, prediction, gold in CASES:
            before = per_call_us(lambda: unbounded(prediction, gold), args.calls)
            after = per_call_us(lambda: scoring.score_answer(prediction, gold), args.calls)
            agree = unbounded(prediction, gold) == scoring.score_answer(prediction, gold).correct
            result["cases"][label] = {"unbounded_us": before, "bounded_us": after, "same_verdict": agree}
            rows.append((f"{label}: unbounded / bounded us", f"{before:.0f} / {after:.0f}"))
    finally:
        pool.close()
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
