"""On-policy distillation through the services: one run of `configs/opd.yaml` with a model teacher.

Starts Redis and the four services on loopback as `score demo --teacher model` does (the built-in teacher model in
the teacher service; `--teacher remote` puts it behind its own OpenAI-compatible server), submits the run, follows it
to its end and reads its `metrics.json`: the OPD step time split into sampling (student episodes), scoring (the
teacher's `POST /v1/logprobs`) and update (trainer step, publication and the student's weight load); the reverse KL
to the teacher per generated token on the training batches; and the arm's measurements on evaluation tasks (greedy
success and reverse KL, before the first update and every `opd.eval_every` steps).

    .venv/bin/python bench/opd_run.py [--config configs/opd.yaml] [--set opd.steps=10] [--split validation]

`--split validation` evaluates on training-split tasks no pool uses (where settings are chosen); the default is the
config's own. Prints a table and writes bench/results/opd_run.json (the run's folder holds report.md and plots).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.report import report  # noqa: E402
from bench.validation_runs import follow, with_setting  # noqa: E402
from shared.schemas.run_config import RunConfig  # noqa: E402


def step_table(steps: list[dict]) -> dict:
    trained = [s for s in steps if "seconds" in s]
    parts = {part: [s["seconds"][part] for s in trained] for part in ("sampling", "scoring", "update")}
    return {
        "steps_trained": len(trained),
        "median_s": {part: statistics.median(values) for part, values in parts.items() if values},
        "share": {part: sum(values) / sum(sum(v) for v in parts.values()) for part, values in parts.items() if values},
        "teacher_kl": [s["metrics"].get("teacher_kl") for s in trained],
        "train_success": [s["success"] for s in trained],
        "scored_tokens": sum(s["scored_tokens"] for s in trained),
    }


def main() -> int:
    from services.cli.client import coordinator_client
    from services.cli.teachers import make_stack, prepare_teacher_model
    from services.launcher import pick_ports, run_with_stack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "opd.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    parser.add_argument("--split", choices=("heldout", "validation"), default=None)
    parser.add_argument("--teacher", choices=("model", "remote"), default="model")
    parser.add_argument("--home", default=os.environ.get("SCORE_HOME", str(Path.home() / ".score")))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "opd_run.json"))
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.config).read_text())
    for assignment in args.set:
        raw = with_setting(raw, assignment)
    if args.split:
        raw["tasks"]["eval_split"] = args.split
    config = RunConfig.model_validate(raw)
    home = Path(args.home).expanduser()
    prepare_teacher_model(args.teacher, home)
    stack = make_stack(args.teacher, home, pick_ports(prefer_defaults=False))
    outcome: dict = {}

    def session() -> int:
        stack.start()
        with coordinator_client(stack.coordinator_url, timeout=60) as client:
            outcome.update(follow(client, config))
        return 0

    code = run_with_stack(stack, session)
    if code:
        return code
    metrics = json.loads((home / "runs" / outcome["run_id"] / "metrics.json").read_text())
    steps = step_table(metrics["opd"]["steps"])
    curve = [{"updates": s["step"] + offset, **point} for s in metrics["opd"]["steps"]
             for when, offset in (("before", 0), ("after", 1)) if (point := (s.get("eval") or {}).get(when))]
    result = {
        "config": Path(args.config).name, "settings": args.set, "eval_set": config.tasks.eval_set,
        "teacher": args.teacher, "run_id": outcome["run_id"], "wall_s": outcome["wall_s"],
        "stage_s": outcome["stage_s"], "steps": steps, "curve": curve, "arms": metrics.get("arms", {}),
        "eval": {label: {"solved": r["solved"], "n": r["n"]} for label, r in outcome["eval"].items()},
        "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.processor()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows = [(f"step {part} s (median of {steps['steps_trained']})", f"{value:.2f}")
            for part, value in steps["median_s"].items()]
    rows += [(f"step {part} share", f"{value:.1%}") for part, value in steps["share"].items()]
    rows += [(f"{config.tasks.eval_set} after {p['updates']} updates: success", f"{p['solved']}/{p['n']}")
             for p in curve]
    rows += [(f"{config.tasks.eval_set} after {p['updates']} updates: reverse KL", f"{p['reverse_kl']:.4f}")
             for p in curve]
    rows += [(f"eval {label}", f"{r['solved']}/{r['n']}") for label, r in result["eval"].items()]
    report(rows, result, args.out)
    print(f"report: {home / 'runs' / outcome['run_id'] / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
