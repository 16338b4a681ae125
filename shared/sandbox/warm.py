"""Sandboxed interpreters started before an episode asks for one, each handed out once.

Starting an interpreter inside the boundary (bwrap, then the child's hardening) takes 100-200 ms, more on a
loaded box, and an episode, a prefix replay or a teacher check used to wait for it on its first step.
`WarmSandboxes` is a sandbox factory (call it for a `Sandbox`, as `partial(Sandbox, ...)` was) that keeps
`ready` interpreters started in background threads; a sandbox takes one when its first step needs it.

Isolation between episodes is unchanged: an interpreter is handed out **at most once**, to one sandbox, which
kills it when it closes or restarts it. A waiting interpreter has run no model code; it is what `spawn()`
returns (hardened, `hello` received), and one that wrote anything or died while waiting is discarded. The
boundary is checked before every start, here and in `Sandbox`, so a host without it still refuses code
(fail closed). When none is ready the sandbox starts its own, as before.

bwrap runs with `--die-with-parent`, which Linux ties to the *thread* that started it: the starting threads
therefore live as long as the factory, and `close()` (after the last sandbox is done) stops them and the
interpreters still waiting.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import deque
from typing import Callable, Mapping

from shared.sandbox import boundary as boundary_module
from shared.sandbox.limits import SandboxLimits
from shared.sandbox.process import Process, base_python, spawn
from shared.sandbox.sandbox import Sandbox, _rmtree

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_S = 5.0   # a failed start (the host refused a process) is not retried in a tight loop


class WarmSandboxes:
    """A factory of sandboxes (`tools`, `limits`, `unconfined` as `Sandbox` takes them) with interpreters ready."""

    def __init__(self, *, tools: Mapping[str, Callable[..., str]] | None = None,
                 limits: SandboxLimits = SandboxLimits(), unconfined: bool = False, ready: int = 4,
                 starters: int = 2) -> None:
        if ready < 0 or starters < 1:
            raise ValueError("ready must be >= 0 and starters >= 1")
        self.tools = dict(tools or {})
        self.limits, self.unconfined, self.ready = limits, unconfined, ready
        self._tool_names = sorted(self.tools)
        self._waiting: deque[tuple[Process, str | None]] = deque()
        self._starting = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._keep_ready, name=f"sandbox-starter-{i}", daemon=True)
                         for i in range(starters if ready else 0)]
        self.stats = {"warm": 0, "cold": 0, "discarded": 0}   # how sandboxes got their interpreters
        for thread in self._threads:
            thread.start()

    def __call__(self) -> Sandbox:
        return Sandbox(tools=self.tools, limits=self.limits, unconfined=self.unconfined, warm=self)

    def fits(self, tool_names: list[str], limits: SandboxLimits, unconfined: bool) -> bool:
        """Whether these interpreters suit a sandbox of these settings (the child is told its tool names)."""
        return (tool_names, limits, unconfined) == (self._tool_names, self.limits, self.unconfined)

    def take(self) -> tuple[Process, str | None] | None:
        """An interpreter no sandbox has had, with its work dir (unconfined only), or None: start your own."""
        dead, taken = [], None
        with self._cond:
            while self._waiting and taken is None:
                process, work = self._waiting.popleft()
                self._cond.notify()   # a starter refills the slot
                if process.popen.poll() is None and not process.pending():
                    taken = process, work
                else:
                    dead.append((process, work))
            self.stats["warm" if taken else "cold"] += 1
            self.stats["discarded"] += len(dead)
        for process, work in dead:
            _discard(process, work)
        return taken

    def close(self) -> None:
        """Stop the starters and the waiting interpreters. Sandboxes handed out must be closed first."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        for process, work in waiting:
            _discard(process, work)

    def _keep_ready(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._waiting) + self._starting >= self.ready:
                    self._cond.wait()
                if self._closed:
                    return
                self._starting += 1
            started = None
            try:
                started = self._start()
            except Exception as exc:   # the sandboxes start their own meanwhile; this thread keeps trying
                logger.warning("could not start a sandbox ahead of need: %s", exc)
            finally:
                with self._cond:
                    self._starting -= 1
                    if started is not None and not self._closed:
                        self._waiting.append(started)
                        started = None
                    elif started is None and not self._closed:
                        self._cond.wait(RETRY_AFTER_FAILURE_S)
            if started is not None:   # closed while it started
                _discard(*started)

    def _start(self) -> tuple[Process, str | None] | None:
        if self.unconfined:
            work = os.path.realpath(tempfile.mkdtemp(prefix="score-sandbox-"))
            try:
                return spawn(work, self._tool_names, self.limits, None), work
            except BaseException:
                _rmtree(work)
                raise
        boundary = boundary_module.check(base_python())
        if not boundary.ok:   # nothing to prepare: every sandbox refuses code here
            return None
        return spawn(None, self._tool_names, self.limits, boundary), None


def _discard(process: Process, work: str | None) -> None:
    process.stop()
    if work is not None:
        _rmtree(work)
