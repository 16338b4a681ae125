"""A sandboxed, persistent Python interpreter for Code-as-Action agents.

One `Sandbox` per episode: model-written code runs in a separate stdlib-only
interpreter process inside a bubblewrap boundary (its own read-only root, a
size-limited tmpfs work dir, no network, its own pids, uid 65534: see
`boundary.py`), hardened further before any model code runs (`_sandbox_child.py`,
docs/sandbox.md); `process.py` starts it and speaks the control protocol.
Variables persist across `run()` calls, and parent-side tools (search indexes,
web search) are reached through request frames on a control pipe, so they never
enter the sandbox.  Where the boundary cannot be set up, `run()`
raises `SandboxError` saying what is missing (fail closed), unless the sandbox was
made `unconfined=True` (trusted development only).

    with Sandbox(tools={"search": search}) as sandbox:
        result = sandbox.run('print(search("x"))')
        result.observation, result.status, result.final_answer

Failure handling: a step that runs past `step_timeout_s`, kills its interpreter
(memory, CPU limit, os._exit, crash) or abuses the control protocol gets a
SIGKILL for the whole process group; a fresh interpreter is started at once and
the code of the earlier steps is replayed (outputs discarded) to restore state
(files too: the new interpreter gets a fresh work dir, and the replay rewrites them).

Start-up: a sandbox made by `WarmSandboxes` (warm.py) takes an interpreter started ahead of time, if one is
ready, instead of waiting for one to start; each interpreter still serves one sandbox only.

Threading: one Sandbox is used by one thread at a time (a lock serialises run()
and close()); many Sandboxes may run concurrently from different threads.  No
preexec_fn is used: limits are applied inside the child before model code runs.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from shared.sandbox import boundary as boundary_module
from shared.sandbox.limits import SandboxLimits
from shared.sandbox.process import Gone, Process, ProtocolError, SandboxError, Timeout, base_python, frame_limit, spawn

logger = logging.getLogger(__name__)

MAX_CODE_CHARS = 1_000_000
MAX_TOOL_RESULT_CHARS = 1_000_000


@dataclass
class ExecResult:
    observation: str            # what the agent sees; never empty; deterministic for the same code and state
    final_answer: str | None    # str(x) if final_answer_print(x) was called during this run()
    status: Literal["ok", "error", "timeout", "killed"]
    duration_s: float


def _rmtree(path: str) -> None:
    """Remove an unconfined sandbox's work dir; never raises (a leftover is logged instead).

    Iterative, on directory fds, never following symlinks: deep trees (no RecursionError) and
    chmod-000 directories are handled.  Sandboxes inside the boundary need none of this: their
    work dir is a tmpfs that goes away with the interpreter."""
    stack: list[tuple[int, str]] = []
    try:
        stack.append((os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW), path))
        while stack:
            fd = stack[-1][0]
            descended = False
            for entry in list(os.scandir(fd)):
                if entry.is_dir(follow_symlinks=False):
                    os.chmod(entry.name, stat.S_IRWXU, dir_fd=fd)   # a directory, not a link: safe to follow
                    stack.append((os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd),
                                  entry.name))
                    descended = True
                    break
                os.unlink(entry.name, dir_fd=fd)
            if not descended:
                fd, name = stack.pop()
                os.close(fd)
                if stack:
                    os.rmdir(name, dir_fd=stack[-1][0])
        os.rmdir(path)
    except Exception as exc:   # cleanup must not fail the request that triggered it
        logger.warning("sandbox work dir %s left behind: %s", path, exc)
    finally:
        for fd, _name in stack:
            os.close(fd)


class _Resources:
    """What a Sandbox must release.  The finaliser holds this object, never the Sandbox itself."""

    def __init__(self) -> None:
        self.work: str | None = None      # the host work dir of an unconfined sandbox (bwrap: a tmpfs)
        self.process: Process | None = None

    def stop_process(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def drop_work(self) -> None:
        """Unconfined only: a restarted interpreter starts in an empty work dir, as under bwrap."""
        if self.work is not None:
            _rmtree(self.work)
            self.work = None

    def release(self) -> None:
        self.stop_process()
        if self.work is not None:
            _rmtree(self.work)
            self.work = None


# --------------------------------------------------------------------------- the public API

class Sandbox:
    """A persistent sandboxed interpreter for one episode."""

    def __init__(self, *, tools: Mapping[str, Callable[..., str]] | None = None,
                 limits: SandboxLimits = SandboxLimits(), unconfined: bool = False, warm=None) -> None:
        """`unconfined=True` runs model code without the bwrap boundary: trusted development only. `warm`: the
        `WarmSandboxes` that made this sandbox (see warm.py), whose interpreters were started for these settings."""
        tools = dict(tools or {})
        for name, fn in tools.items():
            if not name.isidentifier() or name == "final_answer_print" or not callable(fn):
                raise ValueError(f"invalid tool {name!r}: needs an identifier name and a callable")
        if warm is not None and not warm.fits(sorted(tools), limits, unconfined):
            raise ValueError("the warm interpreters were started for other tools, limits or confinement")
        self._tools = tools
        self._limits = limits
        self._unconfined = unconfined
        self._warm = warm
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.release)   # a dropped Sandbox leaks nothing
        self._history: list[str] = []   # steps that completed (ok/error): replayed after a restart
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle
    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the interpreter's process group (and remove an unconfined work dir).  Idempotent."""
        with self._lock:
            self._closed = True
            self._finalizer()

    @property
    def isolation(self) -> tuple[str, ...]:
        """Names of the layers active for this sandbox (starts the interpreter if needed)."""
        with self._lock:
            self._check_open()
            return self._ensure_started().layers

    @property
    def inactive_layer_notes(self) -> tuple[str, ...]:
        """Why the layers missing from `isolation` are off on this host (starts the interpreter if needed)."""
        with self._lock:
            self._check_open()
            return self._ensure_started().notes

    # -- running code
    def run(self, code: str) -> ExecResult:
        """Execute one step in the persistent namespace; never raises for anything the code does.

        `final_answer` is the first `final_answer_print(x)` of this step.  The timeout
        covers the whole call, parent-side tool calls included (a tool call in progress
        is not interrupted; the step times out when it returns).
        """
        if not isinstance(code, str):
            raise TypeError("code must be a str")
        with self._lock:
            self._check_open()
            started = time.monotonic()
            if len(code) > MAX_CODE_CHARS:
                return self._result(f"Error: the code is longer than {MAX_CODE_CHARS} characters.",
                                    None, "error", started)
            note = self._recover_if_stale()
            try:
                done = self._execute(code)
            except Timeout:
                restore = self._restart_and_restore()
                timeout = f"{self._limits.step_timeout_s:g}"
                return self._result(f"Error: execution timed out after {timeout}s. {restore}",
                                    None, "timeout", started)
            except (Gone, ProtocolError) as exc:
                reason = self._failure_reason(exc)
                restore = self._restart_and_restore()
                return self._result(f"Error: the interpreter {reason}. {restore}", None, "killed", started)
            self._history.append(code)
            observation = self._observation(done)
            if note:
                observation = f"{note}\n{observation}"
            return self._result(observation, done["final_answer"], done["status"], started)

    # -- internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the sandbox is closed")

    def _ensure_started(self) -> Process:
        res = self._res
        if res.process is None:
            boundary = None
            if not self._unconfined:
                boundary = boundary_module.check(base_python())
                if not boundary.ok:   # fail closed: no boundary, no code execution
                    raise SandboxError(f"{boundary.problem}; {boundary_module.UNCONFINED_HINT}")
            # A fresh interpreter, never one another sandbox had: started ahead of time, or now.
            taken = self._warm.take() if self._warm is not None and res.work is None else None
            if taken is not None:
                res.process, res.work = taken
                return res.process
            if self._unconfined and res.work is None:
                res.work = os.path.realpath(tempfile.mkdtemp(prefix="score-sandbox-"))
            res.process = spawn(res.work, sorted(self._tools), self._limits, boundary)
        return res.process

    def _recover_if_stale(self) -> str | None:
        """Before a step: an interpreter that wrote or died between steps is replaced."""
        process = self._ensure_started()
        if not process.pending():
            return None
        restore = self._restart_and_restore()
        return f"Note: the interpreter had stopped or misbehaved after the previous step. {restore}"

    def _execute(self, code: str) -> dict:
        """Run one step in the current interpreter; returns its validated `done` frame."""
        process = self._ensure_started()
        deadline = time.monotonic() + self._limits.step_timeout_s
        run_id = secrets.token_hex(8)   # frames of another step (or forged ones) do not match
        max_frame = frame_limit(self._limits)
        process.send({"op": "run", "id": run_id, "code": code}, deadline)
        while True:
            frame = process.recv(deadline, max_frame)
            if frame.get("op") == "tool":   # model code may send these itself: they only call tools
                process.send(self._call_tool(frame), deadline)
            elif frame.get("op") == "done":
                if frame.get("id") != run_id:   # only the bootstrap knows the id (see _sandbox_child._serve)
                    raise ProtocolError("a result frame with a wrong step id")
                return _validated_done(frame)
            else:
                raise ProtocolError(f"an unexpected {str(frame.get('op'))[:40]!r} frame")

    def _call_tool(self, frame: dict) -> dict:
        name, args, kwargs = frame.get("name"), frame.get("args"), frame.get("kwargs")
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ProtocolError("a malformed tool request")
        reply: dict[str, Any] = {"op": "tool_result"}
        fn = self._tools.get(name)
        if fn is None:
            return {**reply, "ok": False, "error": f"no tool named {name!r}"}
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:   # the tool's failure is the code's error, not the service's
            logger.info("sandbox tool %s failed: %s", name, exc)
            return {**reply, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        text = value if isinstance(value, str) else str(value)
        return {**reply, "ok": True, "value": text[:MAX_TOOL_RESULT_CHARS]}

    def _failure_reason(self, exc: Exception) -> str:
        if isinstance(exc, ProtocolError):
            self._res.stop_process()
            return f"broke the control protocol ({exc}) and was stopped"
        return self._res.process.death_reason() if self._res.process else "stopped"

    def _restart_and_restore(self) -> str:
        """Fresh interpreter and work dir; replay earlier steps (outputs discarded).  Returns the note for the agent."""
        self._res.stop_process()
        self._res.drop_work()
        self._ensure_started()
        steps = self._history
        if not steps:
            return "The interpreter was restarted (there was no earlier state to restore)."
        for index, code in enumerate(steps, 1):
            try:
                self._execute(code)
            except (Timeout, Gone, ProtocolError) as exc:
                why = "timeout" if isinstance(exc, Timeout) else "the interpreter stopped"
                self._res.stop_process()
                self._res.drop_work()
                self._ensure_started()
                self._history = []
                return (f"The interpreter was restarted, but restoring the state from earlier steps failed "
                        f"at step {index} of {len(steps)} ({why}); it now starts empty.")
        return "The interpreter was restarted and the state from earlier steps was restored."

    def _observation(self, done: dict) -> str:
        output, total, error = done["output"], done["total"], done["error"]
        if total > len(output):
            text = f"{output}\n...[output truncated: {total - len(output)} more characters]"
        else:
            text = output.rstrip("\n")   # print()'s last newline is not part of the observation
        if error:
            text = f"{text}\n{error}" if text else error
        return text or "Execution finished with no output."

    def _result(self, observation: str, final_answer: str | None, status: str, started: float) -> ExecResult:
        return ExecResult(
            observation=_printable(observation),
            final_answer=None if final_answer is None else _printable(final_answer),
            status=status,   # type: ignore[arg-type]
            duration_s=time.monotonic() - started,
        )


def _validated_done(frame: dict) -> dict:
    ok = (
        frame.get("status") in ("ok", "error")
        and isinstance(frame.get("output"), str)
        and isinstance(frame.get("total"), int) and frame["total"] >= len(frame["output"])
        and isinstance(frame.get("error"), (str, type(None)))
        and isinstance(frame.get("final_answer"), (str, type(None)))
    )
    if not ok:
        raise ProtocolError("a malformed result frame")
    return frame


def _printable(text: str) -> str:
    """Lone surrogates (from odd prints) would break UTF-8 encoding downstream."""
    return text.encode("utf-8", "replace").decode("utf-8")

