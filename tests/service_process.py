"""Start real service processes (`score serve ...`) on free loopback ports for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

SCORE = str(Path(sys.executable).with_name("score"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServiceProcess:
    def __init__(self, service: str, *args: str, home: Path, env: dict | None = None, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{service}-{self.port}.log"
        full_env = {**os.environ, "SCORE_HOME": str(home), **(env or {})}
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [SCORE, "serve", service, "--port", str(self.port), *args],
            env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0, headers: dict | None = None) -> "ServiceProcess":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2, headers=headers).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"service not ready after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@contextmanager
def model_services(home: Path, log_dir: Path, *, teacher_args: tuple[str, ...], env: dict | None = None,
                   teacher_env: dict | None = None):
    """The student, teacher (started with `teacher_args`) and trainer as ready processes; stopped on exit."""
    running = {
        "student": ServiceProcess("student", home=home, log_dir=log_dir, env=env),
        "teacher": ServiceProcess("teacher", *teacher_args, home=home, log_dir=log_dir, env=teacher_env or env),
        "trainer": ServiceProcess("trainer", home=home, log_dir=log_dir, env=env),
    }
    try:
        for service in running.values():
            service.wait_ready()
        yield running
    finally:
        for service in running.values():
            service.stop()


def fresh_home(score_home: Path, root: Path) -> Path:
    """A SCORE_HOME of its own (jobs, checkpoints) sharing the session's built-in models."""
    home = root / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "builtin").symlink_to(score_home / "models" / "builtin")
    return home


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
