"""Teacher log-probabilities of given tokens (on-policy distillation's scoring) against a plain forward pass.

The same batch three ways, side by side, on one model (`--model`, default the built-in teacher):
- `forward`: one plain transformers forward of the whole right-padded batch with every position's logits (what a
  user would write to score sequences), no log-softmax;
- `engine`: `TransformersEngine.score`, what the teacher service runs (length-sorted batches bounded by logit size,
  logits only from the first scored position, log-softmax and gather), in-process;
- `service`: `POST /v1/logprobs` on a real teacher process, JSON both ways.
Tokens/s counts every token read. Repeats alternate the three (the machine is shared); the median is kept.
The target: `service` at least 0.8 of `forward`.

    .venv/bin/python bench/teacher_logprobs.py [--model builtin:teacher-sft] [--sequences 64] [--length 384]

Prints a table and writes bench/results/teacher_logprobs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from shared.checkpoints import resolve_model  # noqa: E402
from shared.models.loading import load_causal_lm  # noqa: E402
from shared.models.transformers_engine import TransformersEngine  # noqa: E402
from tests.service_process import ServiceProcess, fresh_home  # noqa: E402


def batch(n: int, length: int, prompt: int, vocab: int, seed: int = 0) -> list[dict]:
    """`n` sequences of about `length` tokens (lengths vary by a quarter), scored after a `prompt`-token prefix."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        size = int(torch.randint(length * 3 // 4, length * 5 // 4 + 1, (1,), generator=generator))
        ids = torch.randint(3, vocab, (size,), generator=generator).tolist()
        out.append({"token_ids": ids, "score_mask": [0] * prompt + [1] * (size - prompt)})
    return out


@torch.inference_mode()
def plain_forward(model, sequences: list[dict]) -> None:
    width = max(len(s["token_ids"]) for s in sequences)
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(sequences):
        ids[row, : len(s["token_ids"])] = torch.tensor(s["token_ids"])
        mask[row, : len(s["token_ids"])] = 1
    model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:teacher")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--prompt", type=int, default=128, help="unscored tokens at the start of each sequence")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "teacher_logprobs.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(os.environ.get("SCORE_HOME", Path.home() / ".score")).expanduser()
    path = str(resolve_model(args.model, home=home)[0])
    model, tokenizer = load_causal_lm(path, device="cpu", dtype=torch.float32)
    sequences = batch(args.sequences, args.length, args.prompt, len(tokenizer))
    tokens = sum(len(s["token_ids"]) for s in sequences)

    engine = TransformersEngine(path, device="cpu")
    asyncio.run(engine.start())
    starts = [s["score_mask"].index(1) for s in sequences]
    ids = [s["token_ids"] for s in sequences]

    with tempfile.TemporaryDirectory() as tmp:
        teacher = ServiceProcess("teacher", "--engine", "transformers", "--model", path,
                                 home=fresh_home(home, Path(tmp)), log_dir=Path(tmp),
                                 env={"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
        try:
            teacher.wait_ready(timeout_s=300)
            client = httpx.Client(base_url=teacher.url, timeout=600)
            runs = {
                "forward": lambda: plain_forward(model, sequences),
                "engine": lambda: asyncio.run(engine.score(ids, starts)),
                "service": lambda: client.post("/v1/logprobs", json={"sequences": sequences}).raise_for_status(),
            }
            for run in runs.values():  # warm-up: first calls allocate
                run()
            seconds = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    started = time.perf_counter()
                    run()
                    seconds[name].append(time.perf_counter() - started)
        finally:
            teacher.stop()
    asyncio.run(engine.close())

    rates = {name: tokens / statistics.median(times) for name, times in seconds.items()}
    result = {
        "model": args.model, "sequences": args.sequences, "tokens": tokens, "threads": args.threads,
        "seconds": seconds, "tokens_per_s": rates,
        "engine_vs_forward": rates["engine"] / rates["forward"], "service_vs_forward": rates["service"] / rates["forward"],
        "target_service_vs_forward": 0.8, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows = [(f"{name} tokens/s (median of {args.repeats})", f"{rate:,.0f}") for name, rate in rates.items()]
    rows += [("engine / forward", f"{result['engine_vs_forward']:.3f}"),
             ("service / forward (target >= 0.8)", f"{result['service_vs_forward']:.3f}")]
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
