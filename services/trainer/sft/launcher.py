"""The service's side of the warm launcher (`zygote.py`): start it, ask it for training processes, learn their
exit status, and fall back to a fresh process whenever it cannot serve.

A forked training process is the launcher's child, not the service's, so the launcher reports its exit on
the pipe and `LaunchedProcess` answers `pid`, `poll()` and `wait()` as `subprocess.Popen` does. When the
launcher dies, its children die with it (PR_SET_PDEATHSIG): their jobs end as a killed process's do, and the
next job starts a new launcher. One that cannot start (or refuses to fork) is not tried again: jobs then
start fresh processes, as with `warm_start` off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from shared.processes import die_with_parent
from shared.schemas.launcher import LAUNCHER_MESSAGE, Exited, LaunchRequest, Launched, Ready, Refused

log = logging.getLogger("score.trainer.launcher")
START_TIMEOUT_S = 180.0  # importing torch and transformers on a loaded machine
LAUNCH_TIMEOUT_S = 30.0  # one fork and one line back
MAX_RESTARTS = 3  # a launcher that keeps dying is not worth its imports


class LaunchedProcess:
    """A training process forked by the launcher: the part of `subprocess.Popen` the job manager uses."""

    def __init__(self, launcher: "WarmLauncher", pid: int) -> None:
        self.launcher = launcher
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.launcher.pump(0)
            self.returncode = self.launcher.exit_code(self.pid)
            if self.returncode is None and not self.launcher.watches(self.pid) and not _alive(self.pid):
                self.returncode = -signal.SIGKILL  # gone without a word: it can only have been killed with it
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = 0.5 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(f"training process {self.pid}", timeout)
            self.launcher.pump(min(remaining, 0.5))
        return self.returncode


class WarmLauncher:
    """One launcher process, started on demand; `ready_for(env)` says whether a job can use it now."""

    def __init__(self, *, cwd: Path, loop: asyncio.AbstractEventLoop | None = None,
                 notify: Callable[[], None] | None = None) -> None:
        self.cwd = cwd
        self.loop = loop  # wakes `notify` when the launcher speaks, instead of waiting for the next poll
        self.notify = notify
        self.state = "off"  # off -> starting -> ready (-> off when it dies) | broken: jobs start fresh processes
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] | None = None
        self.restarts = 0
        self._started_at = 0.0
        self._pending = b""
        self._answers: collections.deque[Launched | Refused] = collections.deque()
        self._children: set[int] = set()
        self._exits: dict[int, int] = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def ready_for(self, env: dict[str, str]) -> bool | None:
        """True: launch through it now; False: start the process fresh; None: wait, it is importing.

        Import-time state (thread counts, library settings read from the environment) is the launcher's, so a
        job whose environment differs from the one the launcher started with gets a launcher started with it."""
        self.pump(0)
        if self.state == "broken":
            return False
        if self.state == "ready" and env != self.env:
            if self._children:  # its children are training: this job starts fresh, the next may restart it
                return False
            self.close()
        if self.state == "off":
            self._start(env)
        if self.state == "starting" and time.monotonic() - self._started_at > START_TIMEOUT_S:
            self._give_up(f"not ready after {START_TIMEOUT_S:.0f} s")
            return False
        return True if self.state == "ready" else None if self.state == "starting" else False

    def launch(self, request: LaunchRequest) -> LaunchedProcess | None:
        """The forked training process, or None when the launcher could not fork it (start it fresh)."""
        try:
            self.process.stdin.write((request.model_dump_json() + "\n").encode())
            self.process.stdin.flush()
        except OSError:  # it died since the last look
            self._lost()
            return None
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not self._answers:
            if self.state != "ready":
                return None
            if time.monotonic() > deadline:
                self._give_up(f"no answer to a launch in {LAUNCH_TIMEOUT_S:.0f} s")
                return None
            self.pump(0.2)
        answer = self._answers.popleft()
        if isinstance(answer, Refused) or answer.id != request.id:
            reason = answer.reason if isinstance(answer, Refused) else f"answered for {answer.id}"
            if isinstance(answer, Refused) and answer.usable:
                log.warning("warm launcher refused job %s: %s", request.id, reason)
            else:
                self._give_up(reason)
            return None
        return LaunchedProcess(self, answer.pid)

    def exit_code(self, pid: int) -> int | None:
        return self._exits.pop(pid, None)

    def watches(self, pid: int) -> bool:
        """Whether the running launcher will report this child's exit."""
        return pid in self._children

    def pump(self, timeout: float) -> None:
        """Read and apply what the launcher said within `timeout` seconds."""
        if self.process is None or self.process.stdout is None:
            return
        fd = self.process.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._lost()
            return
        self._pending += chunk
        while b"\n" in self._pending and self.process is not None:
            line, self._pending = self._pending.split(b"\n", 1)
            try:
                message = LAUNCHER_MESSAGE.validate_json(line)
            except ValidationError:
                self._give_up(f"it said {line[:200]!r}")
                return
            self._apply(message)

    def close(self) -> None:
        """Stop the launcher (its children with it); the next `ready_for` starts a new one."""
        importing = self.state == "starting"
        process = self._detach()
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()  # end of requests: it exits
        if importing:  # it would read the end only after its imports
            process.kill()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        self._end_children()
        if self.state != "broken":
            self.state = "off"

    # --- internals -------------------------------------------------------------------------------------

    def _start(self, env: dict[str, str]) -> None:
        # numpy's OpenBLAS starts a thread pool when loaded, and a thread cannot cross a fork. Only the
        # launcher gets the setting: the children run with the job's environment (their BLAS is torch's MKL).
        launcher_env = {**env, "OPENBLAS_NUM_THREADS": env.get("OPENBLAS_NUM_THREADS", "1")}
        # Started from the event loop's thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.trainer.sft.zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=str(self.cwd), env=launcher_env, start_new_session=True, preexec_fn=die_with_parent,
        )
        os.set_blocking(self.process.stdout.fileno(), False)
        if self.loop is not None:
            self.loop.add_reader(self.process.stdout.fileno(), self._readable)
        self.env = env
        self.state = "starting"
        self._started_at = time.monotonic()
        log.info("warm launcher starting (pid %d)", self.process.pid)

    def _readable(self) -> None:
        self.pump(0)
        if self.notify is not None:
            self.notify()

    def _apply(self, message) -> None:
        if isinstance(message, Ready):
            self.state = "ready"
            log.info("warm launcher ready (pid %d) after %.1f s", message.pid, time.monotonic() - self._started_at)
        elif isinstance(message, Exited):
            self._children.discard(message.pid)
            self._exits[message.pid] = message.code
        else:
            if isinstance(message, Launched):
                self._children.add(message.pid)  # before any Exited for it, which can come in the same read
            self._answers.append(message)

    def _detach(self) -> subprocess.Popen | None:
        process, self.process = self.process, None
        if process is not None and self.loop is not None:
            self.loop.remove_reader(process.stdout.fileno())
        self._answers.clear()
        self._pending = b""
        return process

    def _lost(self) -> None:
        """The launcher died: its children were SIGKILLed with it; their jobs see that status."""
        was_ready = self.state == "ready"
        process = self._detach()
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        code = process.wait()
        process.stdout.close()
        self._end_children()
        self.restarts += 1
        self.state = "off" if was_ready and self.restarts <= MAX_RESTARTS else "broken"
        log.warning("warm launcher (pid %d) exited with %s; %s", process.pid, code,
                    "a new one starts with the next job" if self.state == "off" else "jobs start fresh processes")

    def _give_up(self, reason: str) -> None:
        log.warning("warm launcher not used any more: %s", reason)
        self.state = "broken"
        process = self._detach()
        if process is not None:
            process.kill()
            process.wait()
            with contextlib.suppress(OSError):
                process.stdin.close()
            process.stdout.close()
        self._end_children()

    def _end_children(self) -> None:
        """Make sure the dead launcher's children are gone (PR_SET_PDEATHSIG already sent them SIGKILL) and
        record them as killed, so that no job waits for a status that will never come."""
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in self._children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self._children:
            self._exits[pid] = -signal.SIGKILL
        self._children.clear()


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
