"""A small pool of scorer processes for math-verify, each killed when one call runs past its time.

math-verify (sympy underneath) can run without bound on short strings: a power tower such as `9^9^9^9`, a
huge factorial, deeply nested brackets. In a thread that holds the GIL it stops the whole service, event
loop and `/health` included, and no thread can be stopped from outside. So the comparison runs in a child
process (`python -m shared._scoring_child`) with an address-space limit (RLIMIT_AS); the caller waits on
its pipe with a deadline (no GIL held while waiting), and a scorer that misses the deadline is SIGKILLed
and replaced. An answer that cannot be compared in time is not equal. Results, timeouts included, are
remembered (bounded LRU), so a repeated pathological answer costs nothing the second time.

One scorer serves one call at a time; `workers` calls run at once and further callers wait for a free
scorer. Scorers start on first use (importing sympy takes about a second, which is not charged to a call's
time limit) and die with the parent (PR_SET_PDEATHSIG, and end of input).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict

log = logging.getLogger("score.scoring")

START_TIMEOUT_S = 60.0  # importing sympy and math-verify on a loaded box; not charged to any call
CACHE_SIZE = 4096


class _Scorer:
    """One child process and the bytes read from it that do not yet end a line."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.proc: subprocess.Popen | None = None
        self.pending = b""

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared._scoring_child", str(self.memory_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
            start_new_session=True,  # a signal to the service's process group does not reach it mid-call
        )
        self.pending = b""
        ready = self._read_line(time.monotonic() + START_TIMEOUT_S)
        if ready != {"ready": True}:
            self.kill()
            raise RuntimeError(f"scorer process did not start (said {ready!r})")

    def equal(self, prediction: str, gold: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or None when it took longer than `timeout_s` or the scorer died."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write((json.dumps({"p": prediction, "g": gold}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            return None
        reply = self._read_line(time.monotonic() + timeout_s)
        if reply is None or "equal" not in reply:
            self.kill()
            return None
        return bool(reply["equal"])

    def _read_line(self, deadline: float) -> dict | None:
        """The next JSON line from the child, or None at the deadline or end of output."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc = None


class ScorerPool:
    """`equal(prediction, gold)` through math-verify in child processes, bounded in time and memory."""

    def __init__(self, *, workers: int = 2, timeout_s: float = 5.0, memory_bytes: int = 1 << 30,
                 cache_size: int = CACHE_SIZE) -> None:
        self.timeout_s, self.memory_bytes, self.cache_size = timeout_s, memory_bytes, cache_size
        self.limits = dict(workers=workers, timeout_s=timeout_s, memory_bytes=memory_bytes)
        self._idle: queue.Queue[_Scorer] = queue.Queue()
        for _ in range(workers):
            self._idle.put(_Scorer(memory_bytes))
        self._cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
        self._lock = threading.Lock()
        self.timeouts = 0
        self.calls = 0

    def equal(self, prediction: str, gold: str) -> bool:
        key = (prediction, gold)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        scorer = self._idle.get()
        try:
            verdict = scorer.equal(prediction, gold, self.timeout_s)
        finally:
            self._idle.put(scorer)
        with self._lock:
            self.calls += 1
            if verdict is None:
                self.timeouts += 1
                log.warning("math scoring gave up after %.1fs (prediction of %d chars): counted as not equal",
                            self.timeout_s, len(prediction))
            self._cache[key] = bool(verdict)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return bool(verdict)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return


_pool: ScorerPool | None = None
_pool_lock = threading.Lock()


def configure(settings) -> ScorerPool:
    """Make the process's pool follow `settings` (a service calls this at start with its own settings);
    a pool with other limits is closed and replaced."""
    global _pool
    limits = dict(workers=settings.scoring_workers, timeout_s=settings.scoring_timeout_s,
                  memory_bytes=settings.scoring_memory_bytes)
    with _pool_lock:
        if _pool is not None and _pool.limits == limits:
            return _pool
        old, _pool = _pool, ScorerPool(**limits)
    if old is not None:
        old.close()
    return _pool


def default_pool() -> ScorerPool:
    """The process's pool: as `configure` last set it, else built on first use from the environment's
    settings (`SCORE_SCORING_*`)."""
    with _pool_lock:
        if _pool is not None:
            return _pool
    from shared.settings import get_settings

    return configure(get_settings())
