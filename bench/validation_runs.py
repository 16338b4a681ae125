"""Settings of the comparison, tried on the validation split: one full run per seed and setting, paired by task.

Starts Redis and the four services on loopback as `score experiment` does (scripted teacher), then for each seed
submits the run that `configs/experiment.yaml` gives that seed, with baseline and control off, every `--set`
applied, and `tasks.eval_split: validation` (training-split tasks no pool uses, disjoint from the held-out set).
It follows each run to its end and records every evaluation (cold start, SCoRe-SFT, SCoRe-RL: per-task outcomes),
mentored problem solving's outcome counts, rows, optimizer steps and stage times. This is where the comparison's
hyperparameters are chosen; held-out tasks are never read.

    .venv/bin/python bench/validation_runs.py --label replay0.25 --seeds 0 1 2 --set sft.replay_bc_init=0.25
    .venv/bin/python bench/validation_runs.py --compare replay1 replay0.25 [--policy sft]

`--set PATH=VALUE` sets a field of the run config (dotted path, YAML value). Each run appends one JSON line to
docs/results/validation-<UTC date>.jsonl (or --out); `--compare A B` reads those lines and prints, per seed and
pooled, B - A for a policy on the same tasks (exact McNemar p per seed, bootstrap 95% CI pooled), as
`score experiment` computes its comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from shared.schemas.experiments import ExperimentConfig  # noqa: E402
from shared.schemas.run_config import RunConfig  # noqa: E402
from shared.schemas.runs import RunState  # noqa: E402
from shared.stats import discordant, mcnemar_exact, paired_bootstrap, wilson  # noqa: E402

POLL_S = 2.0
MPS_OUTCOMES = ("self_solved", "repaired", "unsolved")  # of the SFT pool's tasks (counters mps_train_*)
DEFAULT_OUT = ROOT / "docs" / "results" / f"validation-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"


def with_setting(raw: dict, assignment: str) -> dict:
    """`raw` with the dotted field of `PATH=VALUE` set to the YAML-parsed value."""
    path, sep, value = assignment.partition("=")
    if not sep or not path:
        raise SystemExit(f"--set {assignment!r}: expected PATH=VALUE, e.g. sft.replay_bc_init=0.25")
    node = raw
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {assignment!r}: {key} is not a section")
    node[leaf] = yaml.safe_load(value)
    return raw


def validation_config(experiment: ExperimentConfig, seed: int, settings: list[str], label: str) -> RunConfig:
    """The seed's run of the experiment, on validation tasks, without the reference arms, with `settings`."""
    raw = experiment.run_config(seed).model_dump(mode="json", exclude_none=True)
    for assignment in settings:
        raw = with_setting(raw, assignment)
    raw["tasks"]["eval_split"] = "validation"
    raw["baseline"] = {"enabled": False}
    raw["control"] = {"enabled": False}
    raw["eval"]["teacher"] = False
    raw["name"] = f"val-{label}-seed{seed}"
    return RunConfig.model_validate(raw)  # an invalid --set fails here, before anything starts


def follow(client, config: RunConfig) -> dict:
    """Submit the run and wait for its end; what it measured."""
    from services.cli.client import api_request

    started = time.monotonic()
    run = api_request(client, "POST", "/v1/runs", json=config.model_dump(mode="json", exclude_none=True)).json()
    run_id, last = run["id"], None
    while not RunState(run["state"]).terminal:
        time.sleep(POLL_S)
        run = api_request(client, "GET", f"/v1/runs/{run_id}").json()
        now = run.get("stage")
        if now != last and now:
            print(f"  {time.strftime('%H:%M:%S')} {run_id}: {now}", flush=True)
            last = now
    if run["state"] != "succeeded":
        raise RuntimeError(f"run {run_id} {run['state']}: {run.get('error')}")
    counters = run["counters"]
    stage_s = {name: round(stage["finished_at"] - stage["started_at"], 1) for name, stage in run["stages"].items()
               if stage.get("finished_at") and stage.get("started_at")}
    return {
        "run_id": run_id, "wall_s": round(time.monotonic() - started, 1), "stage_s": stage_s,
        "mps": {outcome: counters.get(f"mps_train_{outcome}", 0) for outcome in MPS_OUTCOMES},
        "counters": counters,
        "eval": {policy: {"solved": r["solved"], "n": r["n"], "outcomes": r.get("outcomes", {})}
                 for policy, r in run["eval"].items()},
    }


def run_label(args) -> int:
    from services.cli.client import coordinator_client
    from services.launcher import ServiceStack, pick_ports, run_with_stack

    experiment = ExperimentConfig.model_validate(yaml.safe_load(Path(args.config).read_text()))
    seeds = args.seeds or experiment.seeds
    configs = [validation_config(experiment, seed, args.set, args.label) for seed in seeds]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stack = ServiceStack(home=Path(args.home), ports=pick_ports(prefer_defaults=False),
                         extra_args={"teacher": ["--engine", "expert"]})

    def session() -> int:
        stack.start()
        with coordinator_client(stack.coordinator_url) as client:
            for seed, config in zip(seeds, configs):
                print(f"{args.label} seed {seed} (validation)", flush=True)
                row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "label": args.label,
                       "seed": seed, "settings": args.set, "config": Path(args.config).name,
                       "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.processor()}",
                       **follow(client, config)}
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                solved = {p: f"{e['solved']}/{e['n']}" for p, e in row["eval"].items()}
                print(f"  {solved} mps {row['mps']} in {row['wall_s']:.0f}s", flush=True)
        return 0

    return run_with_stack(stack, session)


def compare(args) -> int:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    first, second = ({r["seed"]: r for r in rows if r["label"] == label} for label in args.compare)
    seeds = sorted(set(first) & set(second))
    if not seeds:
        raise SystemExit(f"no seed has runs labelled both {args.compare[0]!r} and {args.compare[1]!r} in {args.out}")
    print(f"{args.policy}: {args.compare[1]} - {args.compare[0]} on validation tasks")
    print(f"{'seed':>6} {args.compare[0]:>14} {args.compare[1]:>14} {'diff':>7} {'95% CI':>16} {'p':>8} {'b/c':>7}")
    pooled: list[int] = []
    for seed in seeds:
        a, b = first[seed]["eval"][args.policy]["outcomes"], second[seed]["eval"][args.policy]["outcomes"]
        tasks = sorted(set(a) & set(b))
        diffs = [b[t] - a[t] for t in tasks]
        pooled += diffs
        only_b, only_a = discordant(b, a)
        low, high = paired_bootstrap(diffs)
        rate = lambda o: f"{sum(o[t] for t in tasks) / len(tasks):.1%}"  # noqa: E731
        print(f"{seed:>6} {rate(a):>14} {rate(b):>14} {sum(diffs) / len(diffs):>+7.1%} "
              f"[{low:+.1%},{high:+.1%}] {mcnemar_exact(only_b, only_a):>8.3g} {only_b:>3}/{only_a:<3}")
    low, high = paired_bootstrap(pooled)
    print(f"{'pooled':>6} {'':>14} {'':>14} {sum(pooled) / len(pooled):>+7.1%} [{low:+.1%},{high:+.1%}]")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "experiment.yaml"),
                        help="ExperimentConfig YAML (default: configs/experiment.yaml)")
    parser.add_argument("--label", help="name of this setting in the results file")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="run-config field to change, e.g. sft.replay_bc_init=0.25 (repeatable)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print B - A from the results file")
    parser.add_argument("--policy", default="sft", help="evaluation compared by --compare (bc_init, sft, rl)")
    parser.add_argument("--home", default=os.environ.get("SCORE_HOME") or "/tmp/validation-home",
                        help="SCORE_HOME for the services (default: $SCORE_HOME, else /tmp/validation-home)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"JSON-lines results file (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    if args.compare:
        return compare(args)
    if not args.label:
        parser.error("--label is required to run (or give --compare A B)")
    return run_label(args)


if __name__ == "__main__":
    sys.exit(main())
