"""`score up` and `score demo`: Redis and the four services on loopback, and the whole pipeline on them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services.cli.client import CLIError, coordinator_client, submit
from shared.http_errors import error_message
from services.cli.progress import Progress, final_exit, follow
from services.cli.runs import print_results
from shared.settings import DEFAULT_PORTS


def home_dir(arg: str | None) -> Path:
    from shared.settings import Settings

    return Path(arg).expanduser().resolve() if arg else Settings().home.expanduser().resolve()


def up_command(args: argparse.Namespace) -> int:
    from services.launcher import ServiceStack, StackStartError, port_is_free, sigterm_as_interrupt

    taken = [f"{name} {port}" for name, port in DEFAULT_PORTS.items() if not port_is_free(port)]
    if taken:
        print(f"error: port(s) in use: {', '.join(taken)} (is another `score up` running?)", file=sys.stderr)
        return 1
    extra = {"teacher": ["--engine", "expert"]} if args.teacher_engine == "expert" else {}
    stack = ServiceStack(home=home_dir(args.home), extra_args=extra)
    with sigterm_as_interrupt():
        try:
            print(f"starting Redis and the services (logs: {stack.log_dir}) ...", flush=True)
            stack.start()
            print(f"redis        {stack.redis_url}")
            for name, url in stack.urls.items():
                print(f"{name:<12} {url}")
            print(f"logs         {stack.log_dir}/<service>.log")
            print(f"threads      {stack.threads} per model service")
            print("Ctrl-C stops everything.", flush=True)
            while True:
                dead = [name for name, alive in stack.alive().items() if not alive]
                if dead:
                    service = stack.services[dead[0]]
                    print(f"error: {dead[0]} exited; stopping (log: {service.log_path}):\n{service.log_tail()}",
                          file=sys.stderr)
                    return 1
                time.sleep(1.0)
        except StackStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
            return 0
        finally:
            stack.stop()


CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


# The demo's teacher when --teacher is not given: the scripted solver until the tiny teacher is good enough.
DEMO_TEACHER = "expert"


def demo_config(quick: bool, no_baseline: bool) -> tuple[dict, Path]:
    import yaml

    path = CONFIGS_DIR / ("demo-quick.yaml" if quick else "demo.yaml")
    config = yaml.safe_load(path.read_text()) or {}
    if no_baseline:
        config.setdefault("baseline", {})["enabled"] = False
    return config, path


def teacher_dataset() -> tuple[list[dict], str, dict]:
    """Conversations of the expert solving built-in train tasks, their hash, and the training settings."""
    import hashlib

    import yaml

    from shared.agent.format import episode_messages
    from shared.tasks.builtin import builtin_tasks
    from shared.tasks.gold import gold_episodes

    settings = yaml.safe_load((CONFIGS_DIR / "demo-teacher.yaml").read_text())
    tasks = []
    for family in settings["families"]:
        tasks += builtin_tasks(family=family, split="train", n=settings["n_tasks"], seed=settings["seed"])
    episodes = gold_episodes(tasks)
    rows = [{"messages": episode_messages(task, episode.steps)} for task, episode in zip(tasks, episodes)
            if episode.finished]
    digest = hashlib.sha256(json.dumps({"rows": rows, "hyperparameters": settings["hyperparameters"]},
                                       sort_keys=True).encode()).hexdigest()
    return rows, digest, settings


def tiny_teacher(stack, home: Path) -> Path:
    """The demo teacher checkpoint: a cached one trained on the same data, else a fresh SFT job on the trainer."""
    import asyncio

    from shared.checkpoints import CheckpointStore

    print("preparing the tiny teacher's training data (expert trajectories) ...", flush=True)
    rows, digest, settings = teacher_dataset()
    job_id = f"demo-teacher-{digest[:16]}"
    store = CheckpointStore(home / "checkpoints")
    # The trainer publishes its own metrics; the job id (which carries the dataset hash) is what the index
    # records for every version, so it identifies the data a version was trained on.
    for ref in reversed(store.versions("demo-teacher")):
        if (ref.metrics.get("dataset_hash") == digest or ref.job_id == job_id) and Path(ref.path).is_dir():
            print(f"reusing the tiny teacher demo-teacher/v{ref.version} (same training data)", flush=True)
            return Path(ref.path)
    request = {"kind": "sft", "base": "builtin:teacher", "dataset": {"rows": rows},
               "hyperparameters": settings["hyperparameters"], "output_name": "demo-teacher", "job_id": job_id}
    job = asyncio.run(_train_tiny_teacher(stack.services["trainer"].url, stack.headers(), request, len(rows)))
    print(f"tiny teacher published as {job.checkpoint.reference}", flush=True)
    return Path(job.checkpoint.path)


async def _train_tiny_teacher(trainer_url: str, headers: dict, request: dict, n_rows: int):
    """Submit the teacher's SFT job and follow its events to the end, showing its steps; the succeeded job."""
    import httpx

    from shared.trainer_jobs import JobError, await_job, describe_progress

    progress = Progress()

    async def show(event) -> None:
        if event.type == "progress":
            progress.event({"type": "progress", "stage": "teacher", "data": {"step": event.step},
                            "message": describe_progress(event)})

    async with httpx.AsyncClient(base_url=trainer_url, headers=headers, timeout=60.0) as http:
        response = await http.post("/v1/jobs", json=request)
        if response.status_code >= 400:
            raise CLIError(f"the trainer refused the teacher's SFT job: {error_message(response)}")
        print(f"training the tiny teacher on {n_rows} expert trajectories (job {request['job_id']}) ...", flush=True)
        try:
            return await await_job(http, request["job_id"], on_event=show)
        except JobError as exc:
            raise CLIError(f"training the tiny teacher: {exc}") from None
        finally:
            progress.close()


def demo_command(args: argparse.Namespace) -> int:
    from services.launcher import ServiceStack, pick_ports, run_with_stack

    teacher = args.teacher or DEMO_TEACHER
    config, config_path = demo_config(args.quick, args.no_baseline)
    home = home_dir(args.home)
    extra = {"teacher": ["--engine", "expert"]} if teacher == "expert" else {}
    stack = ServiceStack(home=home, ports=pick_ports(prefer_defaults=True), extra_args=extra)

    def session() -> int:
        print(f"score demo: {config_path.name}, teacher {teacher}, data in {home}", flush=True)
        print(f"starting Redis and the services on loopback ({stack.threads} thread(s) per model service, "
              f"logs in {stack.log_dir}) ...", flush=True)
        started = time.monotonic()
        stack.start()
        print(f"services ready in {time.monotonic() - started:.0f}s: "
              + ", ".join(f"{name} {url}" for name, url in stack.urls.items()), flush=True)
        if teacher == "tiny":
            checkpoint = tiny_teacher(stack, home)
            print("restarting the teacher service on the trained checkpoint ...", flush=True)
            stack.restart("teacher", ["--model", str(checkpoint)])
        with coordinator_client(stack.coordinator_url) as client:
            info = submit(client, config, source=str(config_path))
            print(f"run {info['id']} started; follow it elsewhere with "
                  f"SCORE_COORDINATOR_URL={stack.coordinator_url} score status {info['id']}", flush=True)
            info = follow(client, info["id"])
            print_results(client, info)
        return final_exit(info)

    return run_with_stack(stack, session)
