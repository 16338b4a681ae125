"""On-policy distillation through the services: one run of `configs/opd.yaml` with a model teacher.

Starts Redis and the four services on loopback as `score demo --teacher model` does (the built-in teacher model in
the teacher service; `--teacher remote` puts it behind its own OpenAI-compatible server), submits the run, follows it
to its end and reads its `metrics.json`: the OPD step time split into sampling (student episodes), scoring (the
teacher's `POST /v1/logprobs`) and update (trainer step, publication and the student's weight load); the reverse KL
to the teacher per generated token on the training batches; and the arm's measurements on evaluation tasks (greedy
success and reverse KL, before the first update and every `opd.eval_every` steps).

    .venv/bin/python bench/opd_run.py [--config configs/opd.yaml] [--set opd.steps=10] [--split validation]
                                      [--staleness 0 1]

`--staleness 0 1` runs the config twice on the same services, without and with streaming (the next step sampled
and scored during this one's update), and prints the ratio of their median step times.

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


PARTS = ("sampling", "scoring", "update")


def step_table(steps: list[dict]) -> dict:
    trained = [s for s in steps if "seconds" in s]
    parts = {part: [s["seconds"][part] for s in trained if part in s["seconds"]]
             for part in (*PARTS, "waited", "wall")}
    # Shares of the serial work; with streaming, sampling and scoring overlap the previous update, so `wall` (the
    # step's own time on the clock) is the figure that shows the overlap.
    serial = sum(sum(parts[part]) for part in PARTS)
    return {
        "steps_trained": len(trained),
        "median_s": {part: statistics.median(values) for part, values in parts.items() if values},
        "share": {part: sum(parts[part]) / serial for part in PARTS if parts[part]},
        "sampled_ahead": sum(1 for s in trained if s.get("sampled_ahead")),
        "staleness_mean": statistics.mean(s.get("staleness", 0.0) for s in trained) if trained else 0.0,
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
    parser.add_argument("--staleness", type=int, nargs="+", default=None, metavar="N",
                        help="run the config once per value of opd.hyperparameters.max_staleness, in order, on the "
                        "same services (0: sample, score, update in turn; 1: the next step is sampled and scored "
                        "during this one's update); default: the config's own")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "opd_run.json"))
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.config).read_text())
    for assignment in args.set:
        raw = with_setting(raw, assignment)
    if args.split:
        raw["tasks"]["eval_split"] = args.split
    configs = [RunConfig.model_validate(with_setting(raw, f"opd.hyperparameters.max_staleness={n}"))
               for n in args.staleness] if args.staleness else [RunConfig.model_validate(raw)]
    home = Path(args.home).expanduser()
    prepare_teacher_model(args.teacher, home)
    stack = make_stack(args.teacher, home, pick_ports(prefer_defaults=False))
    outcomes: list[dict] = []

    def session() -> int:
        stack.start()
        with coordinator_client(stack.coordinator_url, timeout=60) as client:
            outcomes.extend(follow(client, config) for config in configs)
        return 0

    code = run_with_stack(stack, session)
    if code:
        return code
    runs = [measured(home, config, outcome) for config, outcome in zip(configs, outcomes)]
    result = {
        "config": Path(args.config).name, "settings": args.set, "teacher": args.teacher, "runs": runs,
        "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.processor()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    rows = [row for run in runs for row in run_rows(run, label=f"staleness {run['max_staleness']}: "
                                                    if len(runs) > 1 else "")]
    if len(runs) > 1:
        base = runs[0]["steps"]["median_s"]["wall"]
        result["wall_ratio"] = {run["max_staleness"]: base / run["steps"]["median_s"]["wall"] for run in runs}
        rows += [(f"step wall, staleness {runs[0]['max_staleness']} / staleness {n}", f"{ratio:.2f}x")
                 for n, ratio in result["wall_ratio"].items() if n != runs[0]["max_staleness"]]
    report(rows, result, args.out)
    for run in runs:
        print(f"report: {home / 'runs' / run['run_id'] / 'report.md'}")
    return 0


def measured(home: Path, config: RunConfig, outcome: dict) -> dict:
    metrics = json.loads((home / "runs" / outcome["run_id"] / "metrics.json").read_text())
    curve = [{"updates": s["step"] + offset, **point} for s in metrics["opd"]["steps"]
             for when, offset in (("before", 0), ("after", 1)) if (point := (s.get("eval") or {}).get(when))]
    return {
        "max_staleness": config.opd.hyperparameters.max_staleness, "eval_set": config.tasks.eval_set,
        "run_id": outcome["run_id"], "wall_s": outcome["wall_s"], "stage_s": outcome["stage_s"],
        "steps": step_table(metrics["opd"]["steps"]), "curve": curve, "arms": metrics.get("arms", {}),
        "eval": {label: {"solved": r["solved"], "n": r["n"]} for label, r in outcome["eval"].items()},
    }


def run_rows(run: dict, label: str) -> list[tuple[str, str]]:
    steps, eval_set = run["steps"], run["eval_set"]
    rows = [(f"{label}step {part} s (median of {steps['steps_trained']})", f"{value:.2f}")
            for part, value in steps["median_s"].items()]
    rows += [(f"{label}step {part} share of serial work", f"{value:.1%}") for part, value in steps["share"].items()]
    rows += [(f"{label}steps sampled ahead", f"{steps['sampled_ahead']}/{steps['steps_trained']}"),
             (f"{label}staleness (mean)", f"{steps['staleness_mean']:.2f}"),
             (f"{label}opd stage s", f"{run['stage_s'].get('opd', 0.0):.1f}")]
    rows += [(f"{label}{eval_set} after {p['updates']} updates: success", f"{p['solved']}/{p['n']}")
             for p in run["curve"]]
    rows += [(f"{label}{eval_set} after {p['updates']} updates: reverse KL", f"{p['reverse_kl']:.4f}")
             for p in run["curve"]]
    rows += [(f"{label}eval {name}", f"{r['solved']}/{r['n']}") for name, r in run["eval"].items()]
    return rows


if __name__ == "__main__":
    sys.exit(main())
