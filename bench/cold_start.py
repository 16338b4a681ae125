"""The cold-start student of a recipe, trained and measured through the real pipeline, on the validation split.

Starts Redis and the four services on loopback as `score experiment` does (scripted teacher), then for each seed
submits the run that the config gives that seed (an ExperimentConfig's `run_config(seed)`, or a RunConfig with
`tasks.seed` set) with the recipe's cold-start settings, and follows it through the coordinator's own `bc_init`
stage (teacher trajectories, the trainer's SFT job) and `eval_bc_init` stage (greedy rollouts, graded). Once the
cold-start student is measured the run is cancelled: the later stages are not what this measures.

Evaluation is on `tasks.eval_split: validation` (training-split tasks no pool uses), so a recipe can be chosen
without touching held-out tasks; `--held-out` measures the held-out set instead, for once after the choice.

    .venv/bin/python bench/cold_start.py [--config configs/experiment.yaml] [--seeds 0 1 2]
        [--n-bc-init 2048] [--epochs 2] [--micro-batch-tokens 2048] [--lr 3e-3] [--base CHECKPOINT]
        [--held-out] [--home DIR]

Prints a table (recipe, seed, success with its 95% Wilson interval, optimizer steps, seconds) and appends one
JSON line per seed, per-task outcomes included, to docs/results/cold-start-<UTC date>.jsonl (or --out).
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
from shared.stats import wilson  # noqa: E402

POLL_S = 2.0


def run_config(raw: dict, seed: int, args) -> RunConfig:
    """The run the config gives `seed`, with the recipe's cold start and only what measuring it needs."""
    if "run" in raw or "seeds" in raw:
        config = ExperimentConfig.model_validate(raw).run_config(seed)
    else:
        config = RunConfig.model_validate(raw)
        config.tasks.seed = seed
    config.name = f"cold-start-seed{seed}"
    # The task counts stay as configured: the validation tasks are the last of the training split after every
    # pool, so they are the ones a run of this config would be validated on.
    if args.n_bc_init is not None:
        config.tasks.n_bc_init = args.n_bc_init
    if args.n_eval is not None:
        config.tasks.n_eval = args.n_eval
    if args.base is not None:
        config.bc_init.base = args.base
    config.tasks.eval_split = "heldout" if args.held_out else "validation"
    updates = {k: v for k, v in (("num_epochs", args.epochs), ("micro_batch_tokens", args.micro_batch_tokens),
                                 ("learning_rate", args.lr), ("max_steps", args.max_steps)) if v is not None}
    hyperparameters = config.bc_init.hyperparameters.model_dump(exclude_unset=True) | updates
    config.bc_init.hyperparameters = type(config.bc_init.hyperparameters).model_validate(hyperparameters)
    config.eval.teacher = False
    config.baseline.enabled = config.baseline.equal_tokens = config.control.enabled = False
    config.rl.steps = 0
    return config


def recipe_label(config: RunConfig) -> str:
    hp = config.bc_init.hyperparameters
    steps = f"steps{hp.max_steps}" if hp.max_steps else f"ep{hp.num_epochs:g}"
    return f"n{config.tasks.n_bc_init}-{steps}-mbt{hp.micro_batch_tokens}-lr{hp.learning_rate:g}"


def measure(client, config: RunConfig) -> dict:
    """Submit the run, wait for its cold-start evaluation, cancel the rest; the figures of the cold start."""
    from services.cli.client import api_request

    started = time.monotonic()
    run = api_request(client, "POST", "/v1/runs", json=config.model_dump(mode="json", exclude_none=True)).json()
    run_id, last = run["id"], None
    while True:
        run = api_request(client, "GET", f"/v1/runs/{run_id}").json()
        evaluated = run["stages"].get("eval_bc_init", {}).get("state") == "done"
        if evaluated or RunState(run["state"]).terminal:
            break
        now = (run.get("stage"), (run["stages"].get(run.get("stage") or "", {}) or {}).get("detail"))
        if now != last and now[0]:
            print(f"  {time.strftime('%H:%M:%S')} {run_id}: {now[0]}{': ' + now[1] if now[1] else ''}", flush=True)
            last = now
        time.sleep(POLL_S)
    if not evaluated:
        raise RuntimeError(f"run {run_id} {run['state']} before the cold start was measured: {run.get('error')}")
    api_request(client, "POST", f"/v1/runs/{run_id}/cancel")
    result, counters = run["eval"]["bc_init"], run["counters"]
    bc, ev = run["stages"]["bc_init"], run["stages"]["eval_bc_init"]
    low, high = wilson(result["solved"], result["n"])
    return {
        "run_id": run_id, "split": config.tasks.eval_split, "solved": result["solved"], "n": result["n"],
        "success": result["success"], "ci95": [round(low, 4), round(high, 4)],
        "optimizer_steps": counters.get("bc_init_optimizer_steps"), "train_rows": counters.get("bc_init_train_rows"),
        "bc_init_s": round(bc["finished_at"] - bc["started_at"], 1),
        "eval_s": round(ev["finished_at"] - ev["started_at"], 1), "total_s": round(time.monotonic() - started, 1),
        "outcomes": result.get("outcomes", {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "experiment.yaml"),
                        help="ExperimentConfig or RunConfig YAML (default: configs/experiment.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the config's)")
    parser.add_argument("--n-bc-init", type=int, help="cold-start tasks (default: the config's)")
    parser.add_argument("--epochs", type=float, help="cold-start num_epochs (default: the config's)")
    parser.add_argument("--max-steps", type=int, help="cold-start max_steps (default: the config's)")
    parser.add_argument("--micro-batch-tokens", type=int, help="cold-start micro_batch_tokens (default: the config's)")
    parser.add_argument("--lr", type=float, help="cold-start learning rate (default: the config's)")
    parser.add_argument("--base", help="checkpoint the cold start fine-tunes (a path or trainer reference; "
                        "default: the config's, else the built-in student)")
    parser.add_argument("--n-eval", type=int, help="tasks evaluated (default: the config's n_eval)")
    parser.add_argument("--held-out", action="store_true",
                        help="evaluate on the held-out split instead of validation (only after choosing a recipe)")
    parser.add_argument("--home", default=os.environ.get("SCORE_HOME") or "/tmp/cold-start-home",
                        help="SCORE_HOME for the services (default: $SCORE_HOME, else /tmp/cold-start-home)")
    parser.add_argument("--out", help="JSON-lines file to append to (default: docs/results/cold-start-<date>.jsonl)")
    args = parser.parse_args()

    from services.cli.client import coordinator_client
    from services.launcher import ServiceStack, pick_ports, run_with_stack

    raw = yaml.safe_load(Path(args.config).read_text())
    seeds = args.seeds or raw.get("seeds") or [raw.get("tasks", {}).get("seed", 0)]
    configs = [run_config(raw, seed, args) for seed in seeds]  # invalid settings fail before anything starts
    out = Path(args.out or ROOT / "docs" / "results" / f"cold-start-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    stack = ServiceStack(home=Path(args.home), ports=pick_ports(prefer_defaults=False),
                         extra_args={"teacher": ["--engine", "expert"]})
    rows: list[dict] = []

    def session() -> int:
        began = time.monotonic()
        stack.start()
        print(f"services ready in {time.monotonic() - began:.0f}s (home {stack.home})", flush=True)
        with coordinator_client(stack.coordinator_url) as client:
            for seed, config in zip(seeds, configs):
                print(f"{recipe_label(config)} seed {seed}: {config.tasks.eval_split} split", flush=True)
                row = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": Path(args.config).name,
                       "recipe": recipe_label(config), "seed": seed,
                       "bc_init": config.bc_init.hyperparameters.model_dump(mode="json", exclude_unset=True),
                       "n_bc_init": config.tasks.n_bc_init, "base": config.bc_init.base,
                       "machine": f"{platform.node()} {os.cpu_count()} cpus",
                       **measure(client, config)}
                rows.append(row)
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"  {row['solved']}/{row['n']} = {row['success']:.1%} {row['split']}, "
                      f"{row['optimizer_steps']} optimizer steps, {row['bc_init_s']:.0f}s cold start", flush=True)
        print()
        print(f"{'recipe':<32} {'seed':>4} {'split':<10} {'success':>8} {'95% CI':>15} {'steps':>6} {'train s':>8} "
              f"{'total s':>8}")
        for r in rows:
            ci = f"[{r['ci95'][0]:.1%},{r['ci95'][1]:.1%}]"
            print(f"{r['recipe']:<32} {r['seed']:>4} {r['split']:<10} {r['success']:>8.1%} {ci:>15} "
                  f"{r['optimizer_steps']:>6} {r['bc_init_s']:>8.0f} {r['total_s']:>8.0f}")
        print(f"\nappended {len(rows)} line(s) to {out}")
        return 0

    return run_with_stack(stack, session)


if __name__ == "__main__":
    sys.exit(main())
