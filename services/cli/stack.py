"""`score up` and `score demo`: Redis and the four services on loopback, and the whole pipeline on them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.cli.client import coordinator_client, submit
from services.cli.progress import final_exit, follow
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


def demo_config(quick: bool, no_baseline: bool) -> tuple[dict, Path]:
    import yaml

    path = CONFIGS_DIR / ("demo-quick.yaml" if quick else "demo.yaml")
    config = yaml.safe_load(path.read_text()) or {}
    if no_baseline:
        config.setdefault("baseline", {})["enabled"] = False
    return config, path


def demo_command(args: argparse.Namespace) -> int:
    from services.cli.builtins import cold_start_base, prepare_builtin
    from services.cli.teachers import DEFAULT_TEACHER, make_stack, prepare_teacher_model
    from services.launcher import pick_ports, run_with_stack
    from services.student.config import StudentConfig

    teacher = args.teacher or DEFAULT_TEACHER
    config, config_path = demo_config(args.quick, args.no_baseline)
    home = home_dir(args.home)
    stack = make_stack(teacher, home, pick_ports(prefer_defaults=True))

    def session() -> int:
        print(f"score demo: {config_path.name}, teacher {teacher}, data in {home}", flush=True)
        prepare_teacher_model(teacher, home)
        prepare_builtin(cold_start_base(config), home, "student")
        # The student service would build its own model on start, silently; built here, the wait is announced.
        prepare_builtin(StudentConfig().model or "builtin:student", home, "student")
        print(f"starting Redis and the services on loopback ({stack.threads} thread(s) per model service, "
              f"logs in {stack.log_dir}) ...", flush=True)
        started = time.monotonic()
        stack.start()
        print(f"services ready in {time.monotonic() - started:.0f}s: "
              + ", ".join(f"{name} {url}" for name, url in stack.urls.items()), flush=True)
        with coordinator_client(stack.coordinator_url) as client:
            info = submit(client, config, source=str(config_path))
            print(f"run {info['id']} started; follow it elsewhere with "
                  f"SCORE_COORDINATOR_URL={stack.coordinator_url} score status {info['id']}", flush=True)
            info = follow(client, info["id"])
            print_results(client, info)
        return final_exit(info)

    return run_with_stack(stack, session)
