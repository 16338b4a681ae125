"""SFT throughput: the trainer's training process vs TRL's SFTTrainer vs a plain torch loop.

All three train the same built-in tiny student on the same gold-trajectory conversations with the same
loss (assistant tokens only), AdamW at the same learning rate, about the same tokens per optimizer step
(--batch conversations), one process, the same torch thread count. Measured: trained-on tokens (real,
not padding) per second over the steps after the first (which pays one-off allocation costs), and the
share of computed token slots that were padding.

- trainer: `python -m services.trainer.sft.train` on a job directory, exactly what the service runs; micro-batches
  of `--batch` x the mean conversation length tokens, bucketed by length; output projection only where loss falls.
- trl: `trl.SFTTrainer` with `assistant_only_loss=True` (the template's generation markers), batches of `--batch`
  conversations padded to the longest (TRL's default collator), in random order.
- torch: the textbook loop: random batches of `--batch` conversations padded to the longest, `model(...,
  labels=...)` over the full vocabulary projection.

    .venv/bin/python bench/trainer_sft.py [--conversations 256] [--batch 8] [--steps 30] [--threads 1]

Prints a table and writes bench/results/trainer_sft.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.report import report  # noqa: E402
from shared.models.builtin import ensure_builtin_model  # noqa: E402
from shared.models.loading import load_tokenizer  # noqa: E402
from shared.schemas.training import Conversation  # noqa: E402
from services.trainer.sft.data import IGNORE_INDEX, tokenize_conversation  # noqa: E402
from tests.trainer.sft_jobs import gold_conversations, make_job_dir, progress  # noqa: E402

LEARNING_RATE = 1e-3


def ours(lines, *, model_dir: Path, home: Path, work: Path, batch_tokens: int, steps: int, threads: int) -> dict:
    job = make_job_dir(
        work / f"bench-{time.time_ns()}", base_path=model_dir, home=home, lines=lines, max_steps=steps,
        micro_batch_tokens=batch_tokens, max_seq_length=min(2048, batch_tokens), learning_rate=LEARNING_RATE,
        log_every_steps=1, save_every_steps=10_000, cpu_threads=threads, device="cpu",
    )
    env = {**os.environ, "SCORE_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    subprocess.run([sys.executable, "-m", "services.trainer.sft.train", "--job-dir", str(job)], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    records = progress(job)[1:]  # step 1 pays the one-off costs
    tokens = sum(r["metrics"]["tokens_per_s"] * r["step_time_s"] for r in records)
    seconds = sum(r["step_time_s"] for r in records)
    started = progress(job, "started")[0]
    return {"tokens_per_s": tokens / seconds, "padding_share": started["padding_share"], "steps": len(records) + 1}


def _padded_batches(examples, batch: int, steps: int, pad_id: int, seed: int = 0):
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < batch * steps:
        order.extend(rng.sample(range(len(examples)), len(examples)))
    for s in range(steps):
        rows = [examples[i] for i in order[s * batch : (s + 1) * batch]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), IGNORE_INDEX)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row.input_ids)
            labels[i, : len(row)] = torch.tensor([t if m else IGNORE_INDEX for t, m in zip(row.input_ids, row.loss_mask)])
            mask[i, : len(row)] = 1
        yield ids, labels, mask


def plain_torch(lines, *, model_dir: Path, batch: int, steps: int) -> dict:
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model_dir)
    examples = [tokenize_conversation(tokenizer, Conversation.model_validate_json(l), 2048) for l in lines]
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    tokens = slots = 0
    seconds = 0.0
    for step, (ids, labels, mask) in enumerate(_padded_batches(examples, batch, steps, tokenizer.pad_token_id)):
        started = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:
            seconds += time.perf_counter() - started
            tokens += int(mask.sum())
            slots += mask.numel()
    return {"tokens_per_s": tokens / seconds, "padding_share": 1 - tokens / slots, "steps": steps}


def trl_sft(lines, *, model_dir: Path, work: Path, batch: int, steps: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    dataset = Dataset.from_list([json.loads(l) for l in lines])
    counts = {"tokens": 0, "slots": 0}
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    config = SFTConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=batch, learning_rate=LEARNING_RATE,
        assistant_only_loss=True, max_length=2048, packing=False, logging_steps=1000, save_strategy="no",
        report_to=[], use_cpu=True, bf16=False, dataloader_num_workers=0, lr_scheduler_type="constant",
        max_grad_norm=1.0, seed=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    collate = trainer.data_collator
    batch_tokens: list[tuple[int, int]] = []

    def counting_collator(features):
        out = collate(features)
        mask = out["attention_mask"] if "attention_mask" in out else torch.ones_like(out["input_ids"])
        batch_tokens.append((int(mask.sum()), mask.numel()))
        return out

    trainer.data_collator = counting_collator
    trainer.add_callback(Timer())
    trainer.train()
    # Step i's batch is the i-th collated one; skip step 1 like the others.
    for tokens, slots in batch_tokens[1 : len(times)]:
        counts["tokens"] += tokens
        counts["slots"] += slots
    return {"tokens_per_s": counts["tokens"] / sum(times[1:]), "padding_share": 1 - counts["tokens"] / counts["slots"],
            "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=256, help="gold arith trajectories to train on")
    parser.add_argument("--batch", type=int, default=8, help="conversations per optimizer step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every method")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "trainer_sft.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        home = Path(os.environ.get("SCORE_HOME", work / "home"))
        model_dir = ensure_builtin_model("student", home)
        lines = list(gold_conversations(args.conversations))
        tokenizer = load_tokenizer(model_dir)
        mean_len = statistics.mean(
            len(tokenize_conversation(tokenizer, Conversation.model_validate_json(l), 2048)) for l in lines
        )
        batch_tokens = int(args.batch * mean_len)
        runs: dict[str, list[dict]] = {"trainer": [], "trl": [], "torch": []}
        for _ in range(args.rounds):
            runs["trainer"].append(ours(lines, model_dir=model_dir, home=home, work=work, batch_tokens=batch_tokens,
                                        steps=args.steps, threads=args.threads))
            runs["trl"].append(trl_sft(lines, model_dir=model_dir, work=work, batch=args.batch, steps=args.steps))
            runs["torch"].append(plain_torch(lines, model_dir=model_dir, batch=args.batch, steps=args.steps))

    def median(name, key="tokens_per_s"):
        return statistics.median(r[key] for r in runs[name])

    result = {
        "model": "builtin:student (nano)", "conversations": args.conversations, "batch_conversations": args.batch,
        "trainer_micro_batch_tokens": batch_tokens, "mean_conversation_tokens": mean_len, "steps": args.steps,
        "threads": args.threads, "runs": runs,
        "tokens_per_s": {name: median(name) for name in runs},
        "padding_share": {name: median(name, "padding_share") for name in runs},
        "ratio_vs_trl": median("trainer") / median("trl"), "ratio_vs_torch": median("trainer") / median("torch"),
    }
    report([
        ("trainer tokens/s", f"{median('trainer'):,.0f}"),
        ("trl SFTTrainer tokens/s", f"{median('trl'):,.0f}"),
        ("plain torch tokens/s", f"{median('torch'):,.0f}"),
        ("trainer / trl", f"{result['ratio_vs_trl']:.2f}x"),
        ("trainer / torch", f"{result['ratio_vs_torch']:.2f}x"),
        ("trainer padding share", f"{median('trainer', 'padding_share'):.1%}"),
        ("trl padding share", f"{median('trl', 'padding_share'):.1%}"),
        ("torch padding share", f"{median('torch', 'padding_share'):.1%}"),
    ], result, args.out)


if __name__ == "__main__":
    main()
