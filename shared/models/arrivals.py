"""Requests on their way to a batching engine: received by the service, not yet queued.

A burst of HTTP requests reaches the engine one handler at a time (parse, validate, tokenize). With only a
gap-bounded gathering window, any pause in that stream (the event loop busy with other sockets, the process
descheduled on a loaded machine) started the batch with the first few requests, and the rest joined it at
later steps, each join one more prefill and cache merge, decoded while the rest of the burst still needed
the CPU to get to the engine. A service that knows a request is coming announces it (`Arrival.expect`, once
its body is in); the engine's worker then waits for announced requests before it starts a batch, and
between two steps for those announced before the step ended, so a burst lands in one prefill. Every such
wait is bounded by `window_s` from its start, and a request counts for `window_s` after its announcement
at most, so a handler that takes long delays decoding once, not at every step.

The arrival travels with the request in a context variable: the service binds it before the request's
handlers run, the engine settles it when it queues the request's generation, and the service settles it
when the request ends, whatever happened.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time

_current: contextvars.ContextVar["Arrival | None"] = contextvars.ContextVar("score_arrival", default=None)


class Arrivals:
    """The deadlines of announced requests, shared by the event loop (announce, settle) and the engine's worker."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[float, float]] = {}  # key -> (announced at, deadline), time.monotonic()
        self._next_id = 0
        self.announced = 0  # requests announced since start

    def arrival(self) -> "Arrival":
        return Arrival(self)

    def current(self) -> "Arrival | None":
        """The arrival bound to the running request, if it was announced to these arrivals."""
        arrival = _current.get()
        return arrival if arrival is not None and arrival._arrivals is self else None

    def expected_until(self, announced_before: float = math.inf) -> float:
        """The latest deadline (`time.monotonic()`) of a request announced before `announced_before` and not
        queued yet; 0.0 when there is none."""
        now = time.monotonic()
        with self._lock:
            latest = max((deadline for at, deadline in self._pending.values() if at < announced_before), default=0.0)
        return latest if latest > now else 0.0

    def _add(self) -> int:
        now = time.monotonic()
        with self._lock:
            self._next_id += 1
            self.announced += 1
            self._pending[self._next_id] = (now, now + self.window_s)
            return self._next_id

    def _remove(self, key: int) -> None:
        with self._lock:
            self._pending.pop(key, None)


class Arrival:
    """One request: `expect()` once it is surely coming, `settle()` once it is queued or gone (both idempotent)."""

    def __init__(self, arrivals: Arrivals) -> None:
        self._arrivals = arrivals
        self._key: int | None = None
        self._settled = False

    def expect(self) -> None:
        if self._key is None and not self._settled:
            self._key = self._arrivals._add()

    def settle(self) -> None:
        self._settled = True
        if self._key is not None:
            self._arrivals._remove(self._key)
            self._key = None

    def bind(self) -> contextvars.Token:
        """Make this the arrival of the current context (and the tasks it starts)."""
        return _current.set(self)

    @staticmethod
    def unbind(token: contextvars.Token) -> None:
        _current.reset(token)
