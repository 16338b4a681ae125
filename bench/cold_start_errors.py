"""Where the cold-start student goes wrong: its first wrong token per episode, teacher-forced, in one process.

`bench/cold_start.py` measures a cold-start recipe through the services (sandboxed rollouts, graded answers);
this bench asks why a recipe fails, and is fast enough to try many: it fine-tunes a base checkpoint (the
built-in student by default) on expert trajectories of arith train-split tasks with the build-time SFT loop
(`shared.models.teacher_build.sft`), then, on other train-split tasks (never held-out ones), checks under
teacher forcing whether greedy decoding reproduces every expert turn, and counts each failing episode's first
wrong token as (expected, predicted, where: plan, thought or code). A student at chance on one kind of token
(for arith: the operator) shows as one family of pairs.

`--variant` rewrites the expert's arith turns before training and checking, to test whether a format is easier
to learn (the suite itself is unchanged):
  base       the expert as it is: thought "Next: multiply by 52.", code `b = a * 52`
  fn         code `b = multiply(a, 52)`: the operation's word is copied instead of mapped to a symbol
  expr       thought "Next: multiply by 52, so b = a * 52.": the code repeats the thought
  anchor-fn  thought "Next: b = multiply by 52.", code `b = multiply(a, 52)`: the code's words follow "b =" in
             the thought, a span an induction head can copy

    .venv/bin/python bench/cold_start_errors.py [--seeds 0 1 2] [--n 1024] [--epochs 3] [--lr 3e-3]
        [--batch-tokens 4096] [--variant base] [--base DIR | --shape SIZE [--layers N] [--mlp N] [--induction-steps N]]
        [--threads 2] [--out FILE]

Prints one row per seed and writes the rows (with the most common first errors) as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from shared.models import builtin, teacher_build  # noqa: E402
from shared.models.loading import load_causal_lm  # noqa: E402
from shared.stats import wilson  # noqa: E402
from shared.tasks.builtin import builtin_tasks  # noqa: E402

VARIANTS = ("base", "fn", "expr", "anchor-fn")
_WORDS = {"+": "add", "-": "subtract", "*": "multiply"}
_EXPRESSION = re.compile(r"^(\w) = (\S+) ([-+*]) (\d+)$", re.M)
VALIDATION_SEED = 777  # train-split tasks for the check; any not used for training


def rewrite(steps, variant: str):
    """The expert's steps with each arith operation written as `variant` says."""
    if variant == "base":
        return steps
    out = []
    for step in steps:
        match = _EXPRESSION.search(step.code or "")
        if match:
            var, source, symbol, operand = match.groups()
            call = f"{var} = {_WORDS[symbol]}({source}, {operand})"
            head, _, phrase = step.thought.rstrip(".").rpartition(": ")
            if variant == "fn":
                step = step.model_copy(update={"code": _EXPRESSION.sub(call, step.code)})
            elif variant == "expr":
                step = step.model_copy(update={"thought": f"{step.thought.rstrip('.')}, so {match.group(0)}."})
            elif variant == "anchor-fn":
                step = step.model_copy(update={"thought": f"{head}: {var} = {phrase}.",
                                               "code": _EXPRESSION.sub(call, step.code)})
        out.append(step)
    return out


def examples(tokenizer, tasks, variant: str):
    return [teacher_build.episode_example(tokenizer, task, rewrite(teacher_build.expert_trajectory(task), variant))
            for task in tasks]


def _part(text: str) -> str:
    """Which part of a turn the text before an error ends in: plan, thought or code."""
    opened = {tag: text.rfind(f"<{tag}>") for tag in ("first_thought", "thought", "code")}
    tag = max(opened, key=opened.get)
    return "plan" if tag == "first_thought" else tag


def first_errors(model, tokenizer, checked) -> collections.Counter:
    """(expected, predicted, where) of each episode's first wrong model token under teacher forcing (pass only
    the episodes `episodes_reproduced` found wrong: the others have none)."""
    counts = collections.Counter()
    with torch.no_grad():
        for ids, mask in checked:
            predicted = model(input_ids=torch.tensor([ids])).logits[0, :-1].argmax(-1).tolist()
            for i, guess in enumerate(predicted):
                if mask[i + 1] and guess != ids[i + 1]:
                    counts[(tokenizer.decode([ids[i + 1]]), tokenizer.decode([guess]),
                            _part(tokenizer.decode(ids[max(0, i - 80):i + 1])))] += 1
                    break
    return counts


def fresh_base(args, directory: Path) -> Path:
    """A student of another shape, induction-pre-trained as the built-in student is (once per process)."""
    if (directory / "config.json").is_file():
        return directory
    from transformers import AutoTokenizer

    from shared.models import induction, tiny

    overrides = {"num_hidden_layers": args.layers, "intermediate_size": args.mlp}
    shape = dict(tiny.TINY_SIZES[args.shape], **{k: v for k, v in overrides.items() if v})
    tiny.TINY_SIZES["bench-shape"] = shape
    tokenizer = AutoTokenizer.from_pretrained(builtin.ensure_builtin_model("student"), local_files_only=True,
                                              padding_side="left")
    model = tiny.build_tiny_model("bench-shape", tokenizer, seed=builtin.ROLE_SEEDS["student"])
    settings = dict(builtin.INDUCTION["student"], steps=args.induction_steps)
    copying = induction.pretrain_induction(model, tokenizer, threads=args.threads, **settings)
    print(f"base: {args.shape} {shape}, induction {args.induction_steps} steps, copy accuracy "
          f"{copying['copy_accuracy']:.1%} ({copying['seconds']:.0f}s)", flush=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_seed(args, seed: int, scratch: Path) -> dict:
    if args.shape:
        base = fresh_base(args, scratch / "base")
    else:
        base = Path(args.base) if args.base else builtin.ensure_builtin_model("student")
    model, tokenizer = load_causal_lm(base, dtype=torch.float32)
    train_tasks = builtin_tasks(family="arith", split="train", n=args.n, seed=1000 + seed)
    used = {task.question for task in train_tasks}
    check_tasks = [t for t in builtin_tasks(family="arith", split="train", n=args.n_check + len(used) // 4,
                                            seed=VALIDATION_SEED) if t.question not in used][:args.n_check]
    trained = teacher_build.sft(model, examples(tokenizer, train_tasks, args.variant), epochs=args.epochs,
                                lr=args.lr, seed=seed, batch_tokens=args.batch_tokens, warmup=30,
                                pad_id=tokenizer.pad_token_id, threads=args.threads)
    checked = examples(tokenizer, check_tasks, args.variant)
    reproduced = teacher_build.episodes_reproduced(model, checked, pad_id=tokenizer.pad_token_id,
                                                   threads=args.threads)
    ok = sum(reproduced)
    low, high = wilson(ok, len(checked))
    errors = first_errors(model, tokenizer, [example for example, good in zip(checked, reproduced) if not good])
    return {"variant": args.variant, "base": str(base), "shape": args.shape, "layers": args.layers, "mlp": args.mlp, "seed": seed, "n_train": args.n, "epochs": args.epochs,
            "lr": args.lr, "batch_tokens": args.batch_tokens, "optimizer_steps": trained["steps"],
            "final_loss": trained["final_loss"], "train_seconds": trained["seconds"], "reproduced": ok,
            "n_check": len(checked), "ci95": [round(low, 4), round(high, 4)],
            "first_errors": [[want, got, where, n] for (want, got, where), n in errors.most_common(10)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=1024, help="training tasks (expert trajectories)")
    parser.add_argument("--n-check", type=int, default=200, help="train-split tasks checked, none trained on")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--variant", choices=VARIANTS, default="base")
    parser.add_argument("--base", help="checkpoint to fine-tune (default: the built-in student)")
    parser.add_argument("--shape", help="instead of --base: a fresh student of this tiny shape (e.g. nano-wide3), "
                        "induction-pre-trained like the built-in student")
    parser.add_argument("--layers", type=int, help="with --shape: override its number of layers")
    parser.add_argument("--mlp", type=int, help="with --shape: override its MLP width (intermediate_size)")
    parser.add_argument("--induction-steps", type=int, default=1000, help="with --shape: induction steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cold_start_errors.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'variant':<10} {'seed':>4} {'steps':>6} {'loss':>7} {'reproduced':>11} {'95% CI':>14}  first errors")
    scratch = Path(tempfile.mkdtemp(prefix="cold-start-errors-"))
    for seed in args.seeds:
        row = run_seed(args, seed, scratch)
        rows.append(row)
        top = ", ".join(f"{where} {want!r}->{got!r} {n}" for want, got, where, n in row["first_errors"][:4])
        print(f"{row['variant']:<10} {seed:>4} {row['optimizer_steps']:>6} {row['final_loss']:>7.4f} "
              f"{row['reproduced']:>5}/{row['n_check']:<5} [{100 * row['ci95'][0]:4.1f}, {100 * row['ci95'][1]:4.1f}]"
              f"  {top}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
