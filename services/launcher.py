"""`ServiceStack`: Redis and the four services as real child processes on loopback (`score up`, `score demo`).

Each service runs as `<venv>/bin/score serve <name> --port P` in its own session, so a Ctrl-C in the terminal
reaches only us and we stop the services in reverse start order (coordinator first, Redis last) instead of all
of them racing each other down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from shared.processes import die_with_parent
from shared.redis_server import EmbeddedRedis, free_port
from shared.settings import DEFAULT_PORTS

logger = logging.getLogger("score.launcher")

# Start order; stopping goes the other way. The coordinator comes last because its workers call the others.
ORDER = ("trainer", "teacher", "student", "coordinator")
MODEL_SERVICES = ("student", "teacher", "trainer")
SCORE = str(Path(sys.executable).with_name("score"))
READY_TIMEOUT_S = 300.0
STOP_GRACE_S = 15.0


class StackStartError(RuntimeError):
    """A service exited or did not become ready; the message carries the tail of its log."""


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch threads per model service: the three share the machine's cores instead of each taking them all."""
    return max(1, cpu_count() // 3)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def pick_ports(prefer_defaults: bool = True) -> dict[str, int]:
    """The standard port of each service where it is free, else a free one."""
    ports: dict[str, int] = {}
    for name in ORDER:
        default = DEFAULT_PORTS[name]
        port = default if prefer_defaults and port_is_free(default) else free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


class _Service:
    """One `score serve <kind>` child process; `name` tells it apart in logs and urls (an engine named
    `teacher-engine` is a `student` service serving the teacher model)."""

    def __init__(self, name: str, port: int, args: list[str], log_path: Path, kind: str | None = None) -> None:
        self.name, self.port, self.args, self.log_path = name, port, args, log_path
        self.kind = kind or name
        self.process: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} score serve {self.kind} "
                      f"--port {self.port} {' '.join(self.args)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self.process = subprocess.Popen(
                [SCORE, "serve", self.kind, "--port", str(self.port), *self.args],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            # The service's own shutdown stops its workers and training processes; the group kill afterwards
            # catches any that a hung or killed service left behind.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %s) ignored SIGTERM for %.0fs; killing it", self.name, process.pid, grace_s)
                process.kill()
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


class ServiceStack:
    """Embedded Redis (unless a Redis URL is given) and the four services, stopped together.

    `extra_args` maps a service to extra `score serve` arguments (e.g. `{"teacher": ["--engine", "expert"]}`);
    `engines` adds model servers the services call, by name: `(kind, port, args)`, e.g. the teacher model behind
    its own OpenAI-compatible server (`("student", 8101, ["--model", "builtin:teacher-sft"])`); they start, and
    are ready, before the four services. `threads` is each model service's OMP/MKL thread count.
    """

    def __init__(
        self,
        *,
        home: Path,
        ports: dict[str, int] | None = None,
        extra_args: dict[str, list[str]] | None = None,
        engines: dict[str, tuple[str, int, list[str]]] | None = None,
        threads: int | None = None,
        redis_url: str | None = None,
        api_token: str | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        ports = {**DEFAULT_PORTS, **(ports or {})}
        self.threads = threads or default_threads()
        self.redis_url = redis_url if redis_url is not None else os.environ.get("SCORE_REDIS_URL") or None
        self.api_token = api_token if api_token is not None else os.environ.get("SCORE_API_TOKEN") or None
        self.ready_timeout_s = ready_timeout_s
        self.log_dir = self.home / "logs"
        extra_args = extra_args or {}
        self.services = {
            name: _Service(name, port, list(args), self.log_dir / f"{name}.log", kind=kind)
            for name, (kind, port, args) in (engines or {}).items()
        }
        self.services.update({
            name: _Service(name, ports[name], list(extra_args.get(name, [])), self.log_dir / f"{name}.log")
            for name in ORDER
        })
        # Engines first: a service that calls a model server checks it while starting.
        self.order = tuple(engines or ()) + ORDER
        self.redis: EmbeddedRedis | None = None
        self._started: list[str] = []

    @property
    def urls(self) -> dict[str, str]:
        return {name: service.url for name, service in self.services.items()}

    @property
    def coordinator_url(self) -> str:
        return self.services["coordinator"].url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}

    def _env(self, name: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "SCORE_HOME": str(self.home),
            "SCORE_REDIS_URL": self.redis_url or "",
            **{f"SCORE_{other.upper()}_URL": self.services[other].url for other in ORDER},
            "PYTHONUNBUFFERED": "1",
        })
        if self.api_token:
            env["SCORE_API_TOKEN"] = self.api_token
        # Model services each get their share of the cores (contention between them slowed a GRPO loop 7x);
        # the coordinator does no tensor work, so one thread keeps it out of their way.
        threads = self.threads if self.services[name].kind in MODEL_SERVICES else 1
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        return env

    def start(self, services: Iterable[str] | None = None) -> "ServiceStack":
        """Start Redis and the services (all of them and the engines by default), and wait until every one is
        ready; engines are ready before the services start."""
        names = [name for name in self.order if services is None or name in set(services)]
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            if self.redis_url is None:
                self.redis = EmbeddedRedis().start()
                self.redis_url = self.redis.url
            engines = [name for name in names if name not in ORDER]
            for group in (engines, [name for name in names if name in ORDER]):
                for name in group:
                    self.services[name].start(self._env(name))
                    self._started.append(name)
                self.wait_ready(group)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, names: Iterable[str]) -> None:
        pending = list(names)
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=2.0, headers=self.headers()) as client:
            while pending:
                for name in list(pending):
                    service = self.services[name]
                    if service.process is None or service.process.poll() is not None:
                        code = None if service.process is None else service.process.returncode
                        raise StackStartError(f"{name} exited with {code} while starting "
                                              f"(log: {service.log_path}):\n{service.log_tail()}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{service.url}/ready").status_code == 200:
                            pending.remove(name)
                            logger.info("%s ready on %s", name, service.url)
                if not pending:
                    return
                if time.monotonic() > deadline:
                    name = pending[0]
                    service = self.services[name]
                    raise StackStartError(f"{name} not ready after {self.ready_timeout_s:.0f}s "
                                          f"(log: {service.log_path}):\n{service.log_tail()}")
                time.sleep(0.3)

    def restart(self, name: str, extra_args: list[str] | None = None) -> None:
        """Stop one service and start it again (with new `score serve` arguments when given), on the same port."""
        service = self.services[name]
        service.stop()
        if extra_args is not None:
            service.args = list(extra_args)
        service.start(self._env(name))
        if name not in self._started:
            self._started.append(name)
        try:
            self.wait_ready([name])
        except BaseException:
            self.stop()
            raise

    def alive(self) -> dict[str, bool]:
        return {name: self.services[name].process is not None and self.services[name].process.poll() is None
                for name in self._started}

    def stop(self) -> None:
        """Stop the services in reverse start order, then Redis. Safe to call twice."""
        for name in reversed(self.order):
            if name in self._started:
                self.services[name].stop()
        self._started.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> "ServiceStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt so `finally` blocks stop the stack when a supervisor stops us."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_with_stack(stack: ServiceStack, session: Callable[[], int]) -> int:
    """Run `session` (the work of `score demo` or `score experiment`) against `stack`, and its exit status: 1 with
    the reason when the stack does not start, 130 on Ctrl-C or SIGTERM; the services are stopped on every way out."""
    with sigterm_as_interrupt():
        try:
            return session()
        except StackStartError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; stopping the services ...", file=sys.stderr, flush=True)
            return 130
        finally:
            stack.stop()
