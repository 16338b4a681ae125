"""One GRPO update on the built-in tiny models: step time, tokens/s and padding share by mini-batch size.

Synthetic rollout groups with the shape of short-horizon SCoRe-RL batches (64 samples in groups of 16, a
96-token prompt and 32-160 generated tokens each), run through the trainer's own `grpo_step` in-process.
The fastest of several repeats is kept: the machine is shared and noisy.

    .venv/bin/python bench/grpo_step.py [--threads 2] [--repeats 5]

Prints a table and writes bench/results/grpo_step.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import report  # noqa: E402
from services.trainer.grpo.step import grpo_step  # noqa: E402
from services.trainer.optim import build_optimizer  # noqa: E402
from shared.models.builtin import ensure_builtin_model  # noqa: E402
from shared.models.loading import load_causal_lm  # noqa: E402
from shared.schemas.rl import GRPOHyperparameters, RLSample  # noqa: E402

SAMPLES, GROUP, PROMPT, COMPLETION = 64, 16, 96, (32, 160)


def synthetic_samples(seed: int = 0) -> list[RLSample]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(SAMPLES):
        completion = int(torch.randint(COMPLETION[0], COMPLETION[1] + 1, (1,), generator=generator))
        ids = torch.randint(3, 2000, (PROMPT + completion,), generator=generator).tolist()
        mask = [0] * PROMPT + [1] * completion
        samples.append(RLSample(token_ids=ids, loss_mask=mask, logprobs=[-7.6 if m else 0.0 for m in mask],
                                policy_version=0, reward=float(i % 3)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="score-bench-grpo-"))
    data = synthetic_samples()
    groups = [data[i:i + GROUP] for i in range(0, SAMPLES, GROUP)]
    rows, results = [], []
    for role in ("student", "teacher"):
        model, _ = load_causal_lm(ensure_builtin_model(role, home), dtype=torch.float32)
        params = sum(p.numel() for p in model.parameters())
        for mini_batch_size in (8, 32, 64):
            hp = GRPOHyperparameters(learning_rate=1e-4, mini_batch_size=mini_batch_size, max_logprob_diff=None)
            policy = copy.deepcopy(model)
            optimizer = build_optimizer(policy, hp)
            grpo_step(policy, optimizer, groups, hp, pad_id=0)  # warm-up: allocator, kernels
            runs = [grpo_step(policy, optimizer, groups, hp, pad_id=0) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["update_time_s"])
            results.append({"role": role, "params": params, "mini_batch_size": mini_batch_size,
                            "update_time_s": best["update_time_s"], "tokens_per_s": best["tokens_per_s"],
                            "padding_share": best["padding_share"], "num_tokens": best["num_tokens"]})
            label = f"{role} {params / 1e6:.2f}M mbs={mini_batch_size}"
            rows.append((f"{label} step s", f"{best['update_time_s']:.2f}"))
            rows.append((f"{label} tokens/s", f"{best['tokens_per_s']:,.0f}"))
            rows.append((f"{label} padding", f"{best['padding_share']:.0%}"))
    report(rows, {"samples": SAMPLES, "group": GROUP, "prompt": PROMPT, "completion": COMPLETION,
                  "threads": args.threads, "runs": results}, args.out)


if __name__ == "__main__":
    main()
