"""`score experiment CONFIG.yaml [--quick]`: start the services on loopback (as `score demo` does), submit the
experiment to the coordinator, show each seed's run as it goes, and print the comparison table."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from services.cli.builtins import is_on_demand

# `--quick` caps every size so the whole comparison runs in a few minutes (CI): two seeds, small pools, a few
# optimizer steps per training job, one RL step on small groups. It checks the machinery (every arm trained and
# evaluated on one held-out set, every figure recomputable), not the method: the student stays near 0%. It also
# starts from the built-in `nano` student when the config names a built-on-demand one (`builtin:student-wide`),
# whose first build alone would take minutes.
QUICK_SEEDS = 2
QUICK_CAPS = {"n_bc_init": 64, "n_train": 8, "n_rl": 4, "n_eval": 16, "n_reserve": 16}
QUICK_SFT_STEPS = 4          # per SFT job (cold start, SCoRe-SFT, baselines)
QUICK_RL = {"steps": 1, "prompts_per_step": 2, "group_size": 2}
POLL_S = 3.0


def quick_config(config: dict) -> dict:
    """The same comparison, smaller: fewer seeds, tasks, optimizer and RL steps; everything else as configured."""
    config = json.loads(json.dumps(config))
    config["seeds"] = (config.get("seeds") or [0, 1, 2])[:QUICK_SEEDS]
    run = config.setdefault("run", {})
    tasks = run.setdefault("tasks", {})
    for field, cap in QUICK_CAPS.items():
        tasks[field] = min(int(tasks.get(field, cap)), cap)
    bc_init = run.setdefault("bc_init", {})
    if is_on_demand(bc_init.get("base")):
        bc_init["base"] = "builtin:student"
    for stage in ("bc_init", "sft", "baseline"):  # the control trains for SCoRe's step count
        hyperparameters = run.setdefault(stage, {}).setdefault("hyperparameters", {})
        hyperparameters["max_steps"] = min(int(hyperparameters.get("max_steps") or QUICK_SFT_STEPS), QUICK_SFT_STEPS)
    rl = run.setdefault("rl", {})
    for field, cap in QUICK_RL.items():
        rl[field] = min(int(rl.get(field, cap)), cap)
    return config


def experiment_command(args) -> int:
    from services.cli.client import CLIError, api_request, coordinator_client, load_config
    from services.cli.stack import home_dir
    from services.coordinator.experiment_results import table
    from services.cli.builtins import cold_start_base, prepare_builtin
    from services.cli.teachers import DEFAULT_TEACHER, make_stack, prepare_teacher_model
    from services.launcher import pick_ports, run_with_stack

    path = Path(args.config)
    config, _ = load_config(path)
    if args.quick:
        config = quick_config(config)
    home = home_dir(args.home)
    teacher = args.teacher or DEFAULT_TEACHER
    stack = make_stack(teacher, home, pick_ports(prefer_defaults=True))

    def session() -> int:
        print(f"score experiment: {path.name}{' (quick)' if args.quick else ''}, seeds {config.get('seeds')}, "
              f"teacher {teacher}, data in {home}", flush=True)
        prepare_teacher_model(teacher, home)
        prepare_builtin(cold_start_base(config.get("run")), home, "student")
        started = time.monotonic()
        stack.start()
        print(f"services ready in {time.monotonic() - started:.0f}s", flush=True)
        with coordinator_client(stack.coordinator_url) as client:
            response = client.post("/v1/experiments", json=config)
            if response.status_code >= 400:
                raise CLIError(f"{path}: the coordinator refused the experiment: {response.text}", 2)
            info = response.json()
            print(f"experiment {info['id']} started", flush=True)
            info = _watch(client, info, api_request)
        if info["state"] != "succeeded":
            print(f"experiment {info['id']} {info['state']}: {info.get('error')}", file=sys.stderr)
            return 1
        folder = Path(info["artifacts"])
        results = json.loads((folder / "results.json").read_text())
        print()
        print(table(results))
        print()
        print(f"{'results.json':<13} {folder / 'results.json'}")
        print(f"{'report.md':<13} {folder / 'report.md'}")
        for plot in sorted((folder / "plots").glob("*.png")):
            print(f"{'plot':<13} {plot}")
        print(f"experiment {info['id']} succeeded in {time.monotonic() - started:.0f}s")
        return 0

    return run_with_stack(stack, session)


def _watch(client, info: dict, request) -> dict:
    """Poll the experiment; print a line whenever a seed's run changes stage or state."""
    seen: dict[str, tuple] = {}
    while True:
        info = request(client, "GET", f"/v1/experiments/{info['id']}").json()
        for seed, run_id in info["runs"].items():
            run = request(client, "GET", f"/v1/runs/{run_id}").json()
            now = (run["state"], run.get("stage"))
            if seen.get(seed) != now:
                seen[seed] = now
                line = f"{time.strftime('%H:%M:%S')} seed {seed}: run {run_id} {run['state']}"
                print(line + (f", stage {run['stage']}" if run.get("stage") else ""), flush=True)
        if info["state"] != "running":
            return info
        time.sleep(POLL_S)
