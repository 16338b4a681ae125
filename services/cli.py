"""`score`: the command line of the SCoRe distillation services."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from shared.settings import DEFAULT_PORTS

# Each service package's `app` module provides `app_from_args(args, settings) -> FastAPI`.
SERVICES = ("coordinator", "student", "teacher", "trainer")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shared.observability import configure_logging
    from shared.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, args.service, settings.log_format)
    module = importlib.import_module(f"services.{args.service}.app")
    try:
        app = module.app_from_args(args, settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = args.port or DEFAULT_PORTS[args.service]
    # log_config=None: uvicorn's own lines go through the service's format too (json stays one object a line)
    uvicorn.run(app, host=args.host, port=port, log_level=settings.log_level, access_log=False, log_config=None)
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from shared.tasks.builtin import FAMILIES, builtin_tasks

    if args.suite != "builtin":
        print(f"error: unknown suite {args.suite!r}; available: builtin", file=sys.stderr)
        return 2
    if args.family is not None and args.family not in FAMILIES:
        print(f"error: unknown family {args.family!r}; available: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    tasks = builtin_tasks(family=args.family, split=args.split, n=args.n, seed=args.seed)
    episodes = None
    if args.trajectories:
        from shared.tasks.gold import gold_episodes

        episodes = gold_episodes(tasks)
    out = sys.stdout
    for index, task in enumerate(tasks):
        row = task.model_dump(mode="json")
        if episodes is not None:
            row["trajectory"] = episodes[index].model_dump(
                mode="json", include={"steps", "final_answer", "finished"}, exclude_none=False
            )
        out.write(json.dumps(row) + "\n")
    return 0


# --- talking to the coordinator -------------------------------------------------------------------

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
# The demo's teacher when --teacher is not given: the scripted solver until the tiny teacher is good enough.
DEMO_TEACHER = "expert"


class CLIError(Exception):
    """A message for the user and the exit code that goes with it."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _headers() -> dict[str, str]:
    from shared.settings import Settings

    token = Settings().api_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def _coordinator_url() -> str:
    from shared.settings import Settings

    return Settings().coordinator_url.rstrip("/")


def _client(base_url: str | None = None, timeout: float = 30.0):
    import httpx

    return httpx.Client(base_url=base_url or _coordinator_url(), headers=_headers(), timeout=timeout)


def _error_message(response) -> str:
    try:
        body = response.json()
        return body["error"]["message"] if isinstance(body.get("error"), dict) else json.dumps(body)
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text.strip() or response.reason_phrase


def _request(client, method: str, path: str, **kwargs):
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise CLIError(f"cannot reach the coordinator at {client.base_url} (is `score up` running? "
                       "SCORE_COORDINATOR_URL sets where it is)") from None
    except httpx.HTTPError as exc:
        raise CLIError(f"{method} {client.base_url}{path} failed: {exc}") from None
    if response.status_code >= 400:
        raise CLIError(f"{response.status_code}: {_error_message(response)}", 2 if response.status_code == 422 else 1)
    return response


def _load_config(path: Path) -> tuple[dict, object | None]:
    """The config as a dict, and its YAML node tree (to point at the line of a field the server refuses)."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}", 2) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise CLIError(f"{path}: JSON syntax error at {where}: {exc.msg}", 2) from None
        node = None
    else:
        try:
            data = yaml.safe_load(text)
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            context, opened = getattr(exc, "context", None), getattr(exc, "context_mark", None)
            if context and opened is not None and (mark is None or opened.line != mark.line):
                problem += f" ({context} at line {opened.line + 1})"
            raise CLIError(f"{path}: YAML syntax error{where}: {problem}", 2) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CLIError(f"{path}: a run config is a mapping of fields (got {type(data).__name__})", 2)
    return data, node


def _line_of(node, param: str | None) -> int | None:
    """The 1-based line of `body.a.b` in a composed YAML document, as deep as the path goes."""
    import yaml

    if node is None or not param:
        return None
    parts = param.split(".")
    if parts and parts[0] == "body":
        parts = parts[1:]
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _submit(client, config: dict, node=None, source: str = "config") -> dict:
    import httpx

    try:
        response = client.post("/v1/runs", json=config)
    except httpx.ConnectError:
        raise CLIError(f"cannot reach the coordinator at {client.base_url} (is `score up` running? "
                       "SCORE_COORDINATOR_URL sets where it is)") from None
    if response.status_code == 422:
        message = _error_message(response)
        param = None
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            param = response.json()["error"]["param"]
        line = _line_of(node, param)
        where = f" (line {line})" if line is not None else ""
        raise CLIError(f"{source}{where}: the coordinator refused the config: {message}", 2)
    if response.status_code >= 400:
        raise CLIError(f"{response.status_code}: {_error_message(response)}")
    return response.json()


def _sse_events(client, run_id: str):
    """RunEvents of a run as dicts, resuming after a dropped connection, until the server ends the stream."""
    import httpx

    last_id, failures = "0", 0
    while True:
        try:
            with client.stream("GET", f"/v1/runs/{run_id}/events", params={"after": last_id},
                               timeout=httpx.Timeout(30.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CLIError(f"{response.status_code}: {_error_message(response)}")
                data_lines: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data_lines.append(line[5:].lstrip())
                    elif line == "" and data_lines:
                        event = json.loads("\n".join(data_lines))
                        data_lines = []
                        last_id = event.get("id", last_id)
                        failures = 0
                        yield event
            return
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as exc:
            failures += 1
            if failures > 10:
                raise CLIError(f"lost the event stream of run {run_id}: {exc}") from None
            time.sleep(min(5.0, 0.5 * failures))


def _fmt_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(float(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Progress:
    """Shows run events: one refreshing status line on a terminal, plain log lines otherwise."""

    PLAIN_PROGRESS_EVERY_S = 10.0

    def __init__(self, out=None, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.stage: str | None = None
        self.status: dict[str, str] = {}
        self.reward: str | None = None
        self._last_plain: dict[str, float] = {}
        self._line_shown = False

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def _clear(self) -> None:
        if self._line_shown:
            self.out.write("\r\x1b[2K")
            self._line_shown = False

    def _print(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def _redraw(self) -> None:
        if not self.tty or self.stage is None:
            return
        line = f"[{self.stage}] {self.status.get(self.stage, '')}"
        if self.reward and self.stage == "rl":
            line += f" | RL reward {self.reward}"
        self.out.write("\r\x1b[2K" + line[: self._width()])
        self.out.flush()
        self._line_shown = True

    def event(self, event: dict) -> None:
        kind, stage, data = event.get("type"), event.get("stage"), event.get("data") or {}
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time") or time.time()))
        message = event.get("message", "")
        if stage:
            self.stage = stage
        if kind == "progress":
            if "step" in data and "done" not in data:  # a trainer job's SFT step
                text = message
            else:
                text = (f"{data.get('done', 0) + data.get('failed', 0)}/{data.get('total', '?')}"
                        + (f", {data['items_per_s']:.2f} items/s" if data.get("items_per_s") else "")
                        + (f", ETA {_fmt_duration(data.get('eta_s'))}" if data.get("eta_s") is not None else "")
                        + (f", {data['failed']} failed" if data.get("failed") else ""))
            if stage:
                self.status[stage] = text
            if self.tty:
                self._redraw()
            else:
                now = time.monotonic()
                finished = data.get("total") and data.get("done", 0) + data.get("failed", 0) >= data["total"]
                if finished or now - self._last_plain.get(stage or "", 0.0) >= self.PLAIN_PROGRESS_EVERY_S:
                    self._last_plain[stage or ""] = now
                    self._print(f"{stamp} {stage or '-'}: {text}")
            return
        if kind == "rl_step" and data.get("reward_mean") is not None:
            self.reward = f"{data['reward_mean']:.3f}"
            if stage:
                self.status[stage] = message.split(":")[0]
        elif kind == "stage" and stage and stage not in self.status:
            self.status[stage] = "starting"
        self._print(f"{stamp} {message}")
        self._redraw()

    def close(self) -> None:
        self._clear()
        self.out.flush()


def _follow(client, run_id: str, progress: _Progress | None = None) -> dict:
    progress = progress or _Progress()
    try:
        for event in _sse_events(client, run_id):
            progress.event(event)
    finally:
        progress.close()
    return _request(client, "GET", f"/v1/runs/{run_id}").json()


def _final_exit(info: dict) -> int:
    if info["state"] == "succeeded":
        print(f"run {info['id']} succeeded")
        return 0
    print(f"run {info['id']} {info['state']}" + (f": {info['error']}" if info.get("error") else ""), file=sys.stderr)
    return 1


def _run(args: argparse.Namespace) -> int:
    path = Path(args.config)
    config, node = _load_config(path)
    with _client() as client:
        info = _submit(client, config, node, source=str(path))
        print(info["id"], flush=True)
        if not args.follow:
            return 0
        info = _follow(client, info["id"], _Progress(tty=False))
    return _final_exit(info)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def _when(timestamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def _status(args: argparse.Namespace) -> int:
    with _client() as client:
        if args.run_id is None:
            runs = _request(client, "GET", "/v1/runs").json()["runs"]
            if not runs:
                print("no runs")
                return 0
            print(_table(["ID", "NAME", "STATE", "STAGE", "CREATED"], [
                [r["id"], r.get("name") or "-", r["state"], r.get("stage") or "-", _when(r.get("created_at"))]
                for r in runs]))
            return 0
        info = _request(client, "GET", f"/v1/runs/{args.run_id}").json()
    print(f"run {info['id']}" + (f" ({info['name']})" if info.get("name") else "")
          + f": {info['state']}" + (f", stage {info['stage']}" if info.get("stage") else ""))
    print(f"created {_when(info.get('created_at'))}, updated {_when(info.get('updated_at'))}")
    print(f"artifacts: {info.get('artifacts')}")
    if info.get("error"):
        print(f"error: {info['error']}")
    print()
    rows = []
    for name, stage in (info.get("stages") or {}).items():
        rows.append([name, stage["state"], f"{stage.get('done', 0)}/{stage.get('total', 0)}",
                     str(stage.get("failed", 0)),
                     f"{stage['items_per_s']:.2f}" if stage.get("items_per_s") is not None else "-",
                     _fmt_duration(stage.get("eta_s")) if stage["state"] == "running" else "-",
                     stage.get("detail") or ""])
    print(_table(["STAGE", "STATE", "DONE/TOTAL", "FAILED", "ITEMS/S", "ETA", "DETAIL"], rows))
    if info.get("counters"):
        print("\ncounters: " + ", ".join(f"{k} {v}" for k, v in sorted(info["counters"].items())))
    if info.get("eval"):
        print()
        print(_table(["POLICY", "SUCCESS", "N"], [
            [label, f"{r['success']:.1%}" if isinstance(r.get("success"), (int, float)) else "-", str(r.get("n", "-"))]
            for label, r in info["eval"].items()]))
    return 0


def _export(args: argparse.Namespace) -> int:
    dataset = args.dataset or ("rl" if args.format == "verl" else "sft")
    extension = "parquet" if args.format == "verl" else "jsonl"
    output = Path(args.output or f"{args.run_id}-{dataset}.{extension}")
    with _client(timeout=120.0) as client:
        response = _request(client, "GET", f"/v1/runs/{args.run_id}/datasets/{dataset}",
                            params={"format": args.format})
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_bytes(response.content)
    partial.replace(output)  # a reader never sees half a file under the final name
    print(f"wrote {output} ({len(response.content)} bytes, {args.format})")
    return 0


# --- the stack: `score up`, `score demo` -----------------------------------------------------------


def _home(arg: str | None) -> Path:
    from shared.settings import Settings

    return Path(arg).expanduser().resolve() if arg else Settings().home.expanduser().resolve()


def _up(args: argparse.Namespace) -> int:
    from services.launcher import ServiceStack, StackStartError, port_is_free, sigterm_as_interrupt

    taken = [f"{name} {port}" for name, port in DEFAULT_PORTS.items() if not port_is_free(port)]
    if taken:
        print(f"error: port(s) in use: {', '.join(taken)} (is another `score up` running?)", file=sys.stderr)
        return 1
    extra = {"teacher": ["--engine", "expert"]} if args.teacher_engine == "expert" else {}
    stack = ServiceStack(home=_home(args.home), extra_args=extra)
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


def _demo_config(quick: bool, no_baseline: bool) -> tuple[dict, Path]:
    import yaml

    path = CONFIGS_DIR / ("demo-quick.yaml" if quick else "demo.yaml")
    config = yaml.safe_load(path.read_text()) or {}
    if no_baseline:
        config.setdefault("baseline", {})["enabled"] = False
    return config, path


def _teacher_dataset() -> tuple[list[dict], str, dict]:
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


def _tiny_teacher(stack, home: Path) -> Path:
    """The demo teacher checkpoint: a cached one trained on the same data, else a fresh SFT job on the trainer."""
    import httpx

    from shared.checkpoints import CheckpointStore
    from shared.schemas.training import TERMINAL_STATES, JobState

    print("preparing the tiny teacher's training data (expert trajectories) ...", flush=True)
    rows, digest, settings = _teacher_dataset()
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
    progress = _Progress()
    with httpx.Client(base_url=stack.services["trainer"].url, headers=stack.headers(), timeout=60.0) as client:
        response = client.post("/v1/jobs", json=request)
        if response.status_code >= 400:
            raise CLIError(f"the trainer refused the teacher's SFT job: {_error_message(response)}")
        print(f"training the tiny teacher on {len(rows)} expert trajectories (job {job_id}) ...", flush=True)
        last_step = None
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if JobState(job["state"]) in TERMINAL_STATES:
                break
            if job.get("step") != last_step:
                last_step = job.get("step")
                loss = (job.get("metrics") or {}).get("loss")
                progress.event({"type": "progress", "stage": "teacher", "data": {"step": job.get("step")},
                                "message": f"SFT step {job.get('step')}/{job.get('total_steps') or '?'}"
                                + (f", loss {loss:.3f}" if loss is not None else "")
                                + (f", ETA {_fmt_duration(job.get('eta_s'))}" if job.get("eta_s") else "")})
            time.sleep(1.0)
    progress.close()
    if job["state"] != "succeeded" or not job.get("checkpoint"):
        raise CLIError(f"training the tiny teacher {job['state']}: {job.get('error') or 'no checkpoint'}")
    checkpoint = job["checkpoint"]
    print(f"tiny teacher published as {checkpoint['name']}/v{checkpoint['version']}", flush=True)
    return Path(checkpoint["path"])


def _print_results(client, info: dict) -> None:
    run_dir = Path(info["artifacts"])
    metrics = None
    with contextlib.suppress(CLIError, ValueError):
        metrics = _request(client, "GET", f"/v1/runs/{info['id']}/metrics").json()
    if metrics is None and (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    print()
    if metrics is not None:
        try:
            from services.coordinator.report import results_table
        except ImportError:
            print(json.dumps(metrics.get("eval", {}), indent=2))
        else:
            print(results_table(metrics))
    elif info.get("eval"):
        print(json.dumps(info["eval"], indent=2))
    print()
    for name in ("report.md", "metrics.json"):
        if (run_dir / name).is_file():
            print(f"{name:<13} {run_dir / name}")
    for plot in sorted((run_dir / "plots").glob("*.png")):
        print(f"{'plot':<13} {plot}")


def _demo(args: argparse.Namespace) -> int:
    from services.launcher import ServiceStack, pick_ports, run_with_stack

    teacher = args.teacher or DEMO_TEACHER
    config, config_path = _demo_config(args.quick, args.no_baseline)
    home = _home(args.home)
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
            checkpoint = _tiny_teacher(stack, home)
            print("restarting the teacher service on the trained checkpoint ...", flush=True)
            stack.restart("teacher", ["--model", str(checkpoint)])
        with _client(stack.coordinator_url) as client:
            info = _submit(client, config, source=str(config_path))
            print(f"run {info['id']} started; follow it elsewhere with "
                  f"SCORE_COORDINATOR_URL={stack.coordinator_url} score status {info['id']}", flush=True)
            info = _follow(client, info["id"])
            _print_results(client, info)
        return _final_exit(info)

    return run_with_stack(stack, session)


def _experiment(args: argparse.Namespace) -> int:
    from services.experiment_cli import experiment

    return experiment(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service (what docker compose runs)")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: the service's standard port")
    serve.add_argument("--model", default=None, help="checkpoint directory (default: the built-in tiny model)")
    serve.add_argument("--engine", choices=("transformers", "openai", "expert"), default=None,
                       help="model backend: transformers (in-process, default), openai (remote OpenAI-compatible "
                       "server) or expert (teacher only: the built-in suite's scripted solver)")
    serve.add_argument("--base-url", default=None, help="OpenAI-compatible server for --engine openai")
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    serve.set_defaults(func=_serve)

    tasks = commands.add_parser("tasks", help="write built-in tasks as task-file JSONL to stdout")
    tasks.add_argument("--suite", default="builtin")
    tasks.add_argument("--family", default=None, help="arith or kb (default: both)")
    tasks.add_argument("--split", choices=("train", "eval"), default="train")
    tasks.add_argument("--n", type=int, default=100)
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--trajectories", action="store_true", help="add the expert's gold trajectory to each line")
    tasks.set_defaults(func=_tasks)

    up = commands.add_parser("up", help="start Redis (unless SCORE_REDIS_URL is set) and the four services; "
                             "Ctrl-C stops them all")
    up.add_argument("--teacher-engine", choices=("expert", "transformers"), default="transformers",
                    help="teacher backend: the built-in tiny model (transformers) or the scripted solver (expert)")
    up.add_argument("--home", default=None, help="data directory (default: SCORE_HOME)")
    up.set_defaults(func=_up)

    demo = commands.add_parser("demo", help="start everything on loopback and run the whole SCoRe pipeline on "
                               "the built-in suite with tiny models")
    demo.add_argument("--quick", action="store_true", help="a smaller run (configs/demo-quick.yaml)")
    demo.add_argument("--teacher", choices=("expert", "tiny"), default=None,
                      help=f"expert: the scripted solver; tiny: the built-in tiny teacher, trained first on expert "
                      f"trajectories (cached). Default: {DEMO_TEACHER}")
    demo.add_argument("--home", default=None, help="data directory (default: SCORE_HOME)")
    demo.add_argument("--no-baseline", action="store_true", help="skip the plain-distillation baseline")
    demo.set_defaults(func=_demo)

    run = commands.add_parser("run", help="submit a run config (YAML or JSON) to the coordinator")
    run.add_argument("config", help="run config file (.yaml, .yml or .json)")
    run.add_argument("--follow", action="store_true", help="print the run's events until it ends")
    run.set_defaults(func=_run)

    experiment = commands.add_parser("experiment", help="compare SCoRe with plain distillation and a control: "
                                     "several seeds, one held-out set (starts the services on loopback)")
    experiment.add_argument("config", help="experiment config (.yaml or .json; configs/experiment.yaml)")
    experiment.add_argument("--quick", action="store_true", help="a small version for CI (2 seeds, small pools)")
    experiment.add_argument("--home", default=None, help="data directory (default: SCORE_HOME)")
    experiment.set_defaults(func=_experiment)

    status = commands.add_parser("status", help="list runs, or show one run's progress")
    status.add_argument("run_id", nargs="?", default=None)
    status.set_defaults(func=_status)

    export = commands.add_parser("export", help="download a run's dataset")
    export.add_argument("run_id")
    export.add_argument("--format", choices=("messages", "sharegpt", "verl"), default="messages")
    export.add_argument("--dataset", choices=("sft", "bc_init", "baseline", "rl"), default=None,
                        help="default: sft (rl for --format verl)")
    export.add_argument("-o", "--output", default=None, help="default: <run>-<dataset>.<ext> in the current directory")
    export.set_defaults(func=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `score status | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
