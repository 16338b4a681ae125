"""Variants of the `teacher-sft` recipe's agent stage, built step by step for comparison on validation tasks.

    .venv/bin/python bench/teacher_agent_stage.py --out /tmp/stages/epochs3 --set epochs=3.0
    .venv/bin/python bench/teacher_agent_stage.py --out /tmp/stages/fresh2 --renamings 2
    .venv/bin/python bench/teacher_model.py --model /tmp/stages/epochs3 --split train --n 100 \
        --also-exclude ~/.score/models/builtin/teacher-sft

Starts from the recipe's induction checkpoint (built once into `--induction`, reused by every variant: the same
weights for all), runs the agent SFT of `SFT["teacher-sft"]` with `--set key=value` overrides, and saves a model
directory whose `builtin.json` records the recipe's settings (judge stage included), so `bench/teacher_model.py
--split train` leaves out the same tasks for every variant and the full build. The judge stage is not run: this
compares agent stages only.

`--judge-from DIR` runs the recipe's judge stage (`--set judge.KEY=VALUE` to change it) from an agent stage saved
in DIR, for comparing judge stages with `bench/teacher_corrections.py --model-dir OUT --model-split train`.

`--renamings K` trains one pass over K copies of the episodes, each kb copy with its own swap of names
(`agent_examples(seed=seed + k)`), instead of `epochs` passes over one swap.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer, Qwen2ForCausalLM  # noqa: E402

from shared.models import builtin, induction, teacher_build  # noqa: E402
from shared.models.tiny import ROLE_SIZES, build_tiny_model  # noqa: E402

ROLE = "teacher-sft"


def _induction_checkpoint(directory: Path, tokenizer_dir: Path, threads: int, settings: dict) -> Path:
    record = directory / "induction.json"
    if record.exists():
        built = json.loads(record.read_text()).get("settings", builtin.INDUCTION[ROLE])
        if built != settings:
            raise SystemExit(f"{directory} holds an induction checkpoint of other settings ({built}); "
                             "name another --induction directory")
        return directory
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, padding_side="left")
    model = build_tiny_model(ROLE_SIZES[ROLE], tokenizer, seed=builtin.ROLE_SEEDS[ROLE])
    copying = induction.pretrain_induction(model, tokenizer, threads=threads, **settings)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    record.write_text(json.dumps({**copying, "settings": settings}, indent=2) + "\n")
    return directory


def _save(out: Path, model, tokenizer, record: dict) -> None:
    """The stage's model, tokenizer and `builtin.json` (whose `sft.settings` bench/teacher_model.py reads)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / builtin.MANIFEST).write_text(json.dumps(record, indent=2) + "\n")


def _assigned(settings: dict, assignments: list[str]) -> dict:
    """`settings` with KEY=VALUE assignments applied (VALUE a Python literal)."""
    updated = dict(settings)
    for item in assignments:
        key, _, value = item.partition("=")
        updated[key] = ast.literal_eval(value)
    return updated


def _overridden(settings: dict, assignments: list[str]) -> dict:
    """`settings` with KEY=VALUE assignments applied (VALUE a Python literal; judge.KEY for the judge stage's)."""
    judge = [item.removeprefix("judge.") for item in assignments if item.startswith("judge.")]
    agent = [item for item in assignments if not item.startswith("judge.")]
    return {**_assigned(settings, agent), "judge": _assigned(settings["judge"], judge)}


def _judge_stage(args) -> int:
    source = args.judge_from
    settings = _overridden(json.loads((source / builtin.MANIFEST).read_text())["sft"]["settings"], args.set)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, padding_side="left")
    model = Qwen2ForCausalLM.from_pretrained(source)
    started = time.perf_counter()
    trained = teacher_build.judge_sft(model, tokenizer,
                                      {**settings["judge"], "threads": args.threads or settings["judge"]["threads"]},
                                      replay_task_seed=settings["task_seed"])
    _save(args.out, model, tokenizer, {"sft": {"settings": settings, "judge": trained}, "agent_stage": str(source),
                                       "stage_seconds": round(time.perf_counter() - started, 1)})
    print(json.dumps(trained))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--induction", type=Path, default=Path("/tmp/teacher-stages/induction"),
                        help="the induction checkpoint (built here first if missing)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the agent stage (a Python literal), e.g. epochs=3.0")
    parser.add_argument("--induction-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the induction pre-training (e.g. steps=2000); needs its own "
                             "--induction directory")
    parser.add_argument("--renamings", type=int, default=0,
                        help="one pass over this many differently renamed copies (0: the recipe's epochs)")
    parser.add_argument("--judge-from", type=Path, metavar="DIR",
                        help="run the judge stage instead, from an agent stage this script saved in DIR; "
                             "--set judge.KEY=VALUE overrides its settings")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the recipe's, 1 for the agent stage and the judge stage's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.judge_from:
        return _judge_stage(args)

    tokenizer_dir = builtin.ensure_builtin_model("student").parent / builtin.TOKENIZER_DIRNAME
    threads = args.threads or builtin.PRETRAIN_THREADS
    checkpoint = _induction_checkpoint(args.induction, tokenizer_dir, threads,
                                       _assigned(builtin.INDUCTION[ROLE], args.induction_set))
    settings = _overridden(builtin.SFT[ROLE], args.set)

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True, padding_side="left")
    model = Qwen2ForCausalLM.from_pretrained(checkpoint)
    started = time.perf_counter()
    tasks = teacher_build.training_tasks(settings["tasks"], settings["task_seed"])
    copies = max(1, args.renamings)
    examples = []
    for k in range(copies):
        examples += teacher_build.agent_examples(tokenizer, tasks, rename_kb=settings.get("rename_kb", 0.0),
                                                 seed=settings["seed"] + k)
    epochs = 1.0 if args.renamings else settings["epochs"]
    trained = teacher_build.sft(model, examples, epochs=epochs, lr=settings["lr"], seed=settings["seed"],
                                batch_tokens=settings["batch_tokens"], warmup=settings["warmup"],
                                pad_id=tokenizer.pad_token_id, threads=threads)
    _save(args.out, model, tokenizer, {"sft": {"settings": settings, "renamings": args.renamings, **trained},
                                       "stage_seconds": round(time.perf_counter() - started, 1),
                                       "induction_checkpoint": str(checkpoint),
                                       "induction": json.loads((checkpoint / "induction.json").read_text())})
    print(json.dumps({"renamings": args.renamings, **trained}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
