"""A sandboxed, persistent Python interpreter for Code-as-Action agents.

One `Sandbox` per episode: model-written code runs in a separate stdlib-only
interpreter process inside a bubblewrap boundary (its own read-only root, a
size-limited tmpfs work dir, no network, its own pids, uid 65534: see
`boundary.py`), hardened further before any model code runs (`_sandbox_child.py`,
docs/sandbox.md). Variables persist across `run()` calls, and parent-side tools
(search indexes, web search) are reached through request frames on a control pipe,
so they never enter the sandbox.  Where the boundary cannot be set up, `run()`
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

Threading: one Sandbox is used by one thread at a time (a lock serialises run()
and close()); many Sandboxes may run concurrently from different threads.  No
preexec_fn is used: limits are applied inside the child before model code runs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from shared.tools import boundary as boundary_module
from shared.tools.limits import SandboxLimits

logger = logging.getLogger(__name__)

# What a sandbox has, in order: the boundary's layers (bwrap), the parent's, then the child's own.
BOUNDARY_LAYERS = ("own-filesystem", "no-network", "own-pids", "sandbox-uid", "no-new-privileges", "disk-quota")
_PARENT_LAYERS = ("isolated-python", "scrubbed-env")   # always on: set up here
CHILD_LAYERS = ("rlimits", "no-child-processes", "seccomp", "audit-hooks")
LAYERS = BOUNDARY_LAYERS + _PARENT_LAYERS + CHILD_LAYERS

STARTUP_TIMEOUT_S = 15.0      # generous: a loaded CI box can be slow to exec an interpreter
RECURSION_CAP = 20_000        # highest sys.setrecursionlimit() the child accepts
MAX_CODE_CHARS = 1_000_000
MAX_TOOL_RESULT_CHARS = 1_000_000
_HEADER = struct.Struct("!I")
# In-child layers to leave off, for tests only: they check that the boundary holds on its own
# (e.g. with the audit hook off, as if model code had found a way past it).
# Allowed: no-child-processes, seccomp, audit-hooks.
_DISABLED_LAYERS: frozenset[str] = frozenset()
_CHILD_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")


class SandboxError(RuntimeError):
    """The sandbox interpreter could not be started (a deployment problem, not the agent's)."""


@dataclass
class ExecResult:
    observation: str            # what the agent sees; never empty; deterministic for the same code and state
    final_answer: str | None    # str(x) if final_answer_print(x) was called during this run()
    status: Literal["ok", "error", "timeout", "killed"]
    duration_s: float


# --------------------------------------------------------------------------- the child process

class _Timeout(Exception):
    pass


class _Gone(Exception):
    """The interpreter closed the control pipe (it died, or the code closed the pipe)."""


class _ProtocolError(Exception):
    """The interpreter sent something that is not a valid frame: treated as abuse."""


def _describe_exit(returncode: int, *, bwrapped: bool) -> str:
    if bwrapped and 128 < returncode < 128 + 65:
        returncode = 128 - returncode   # bwrap exits with 128+N when its child died of signal N
    if returncode < 0:
        reasons = {
            signal.SIGXCPU: "was killed: CPU time limit exceeded",
            signal.SIGKILL: "was killed (SIGKILL: the CPU time or memory limit, or the code killed itself)",
            signal.SIGSEGV: "crashed (segmentation fault, e.g. a recursion too deep for the C stack)",
            signal.SIGXFSZ: "was killed: file size limit exceeded",
            signal.SIGSYS: "was killed by the system-call filter",
        }
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return reasons.get(-returncode, f"was killed by {name}")
    if returncode == 71:
        return "stopped: its control pipe was closed or corrupted by the code"
    return f"exited with status {returncode}"


class _Process:
    """One running child interpreter and the parent's ends of its two pipes."""

    def __init__(self, popen: subprocess.Popen, cmd_w: int, res_r: int, *, bwrapped: bool) -> None:
        self.popen, self.cmd_w, self.res_r, self.bwrapped = popen, cmd_w, res_r, bwrapped
        self.layers: tuple[str, ...] = ()
        self.notes: tuple[str, ...] = ()   # why the other layers are off on this host

    # -- frames
    def send(self, frame: dict, deadline: float) -> None:
        payload = json.dumps(frame).encode("utf-8")
        view = memoryview(_HEADER.pack(len(payload)) + payload)
        while view:
            try:
                view = view[os.write(self.cmd_w, view):]
            except BlockingIOError:   # the child is not reading (busy): wait, within the deadline
                self._wait(self.cmd_w, select.POLLOUT, deadline)
            except BrokenPipeError:
                raise _Gone() from None

    def recv(self, deadline: float, max_frame: int) -> dict:
        (length,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        if length > max_frame:
            raise _ProtocolError(f"a frame of {length} bytes exceeds the {max_frame}-byte limit")
        body = self._read_exact(length, deadline)
        try:
            frame = json.loads(body)
        except (ValueError, RecursionError):
            raise _ProtocolError("a frame that is not valid JSON") from None
        if not isinstance(frame, dict):
            raise _ProtocolError("a frame that is not a JSON object")
        return frame

    def pending(self) -> bool:
        """Whether the child wrote (or closed the pipe) while no step was running."""
        poller = select.poll()
        poller.register(self.res_r, select.POLLIN)
        return bool(poller.poll(0))

    def _read_exact(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._wait(self.res_r, select.POLLIN, deadline)
            chunk = os.read(self.res_r, n - len(buf))
            if not chunk:
                raise _Gone()
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _wait(fd: int, event: int, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout()
        poller = select.poll()   # not select(): a busy service may hold fds above 1024
        poller.register(fd, event)
        if not poller.poll(remaining * 1000):
            raise _Timeout()

    # -- ending
    def death_reason(self) -> str:
        """After EOF on the pipe: why the child stopped (stopping it if it still runs)."""
        exited = self._exited_within(1.0)
        self.stop()
        if not exited:
            return "closed its control pipe and was stopped"
        return _describe_exit(self.popen.returncode, bwrapped=self.bwrapped)

    def _exited_within(self, timeout: float) -> bool:
        # WNOWAIT: look without reaping, so the pid (= process group id) stays ours until stop().
        end = time.monotonic() + timeout
        while True:
            try:
                if os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    return True
            except ChildProcessError:
                return True
            if time.monotonic() > end:
                return False
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGKILL the whole process group, reap the child, close the pipes.  Idempotent.

        Under bwrap the group is bwrap's; the interpreter, in its own session and pid namespace,
        dies with it (--die-with-parent, and the namespace's init going away)."""
        if self.popen.returncode is None:   # not reaped yet, so the group id cannot have been reused
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.popen.wait()
        for fd in (self.cmd_w, self.res_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.cmd_w = self.res_r = -1


def _child_source() -> str:
    with open(_CHILD_SOURCE, encoding="utf-8") as f:
        return f.read()


def _base_python() -> str:
    """The interpreter under the venv: no site-packages, so neither the project nor its deps."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return base if os.path.exists(base) else sys.executable


def _child_env(work_dir: str) -> dict[str, str]:
    # Built from nothing: no token, URL or PYTHON* variable of the service reaches the child.
    # (-E is not used because PYTHONHASHSEED must be read; every variable here is ours. PWD: bwrap sets it.)
    return {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work_dir, "TMPDIR": work_dir, "PWD": work_dir,
        "PYTHONHASHSEED": "0", "PYTHONUTF8": "1", "TZ": "UTC0",
    }


def _max_frame(limits: SandboxLimits) -> int:
    # Output is capped in the child; JSON escapes take at most 12 bytes per character.
    return 2 * 2**20 + 12 * limits.max_output_chars


def _spawn(work: str | None, tools: list[str], limits: SandboxLimits, boundary: boundary_module.Boundary | None,
           ) -> _Process:
    """Start one interpreter: inside bwrap (`boundary`), or unconfined in the host dir `work`."""
    python = _base_python()
    if boundary is not None:
        prefix = boundary_module.command_prefix(boundary, boundary_module.interpreter(python),
                                                disk_bytes=limits.disk_bytes)
        work = boundary_module.WORK_DIR
    else:
        prefix = []
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    log = tempfile.TemporaryFile(prefix="score-sandbox-log-")   # unnamed: nothing to clean up
    config = {
        "cmd_fd": cmd_r, "res_fd": res_w, "work_dir": work, "tools": tools,
        "cpu_time_s": limits.cpu_time_s, "memory_bytes": limits.memory_bytes,
        "max_file_bytes": limits.max_file_bytes, "max_open_files": limits.max_open_files,
        "max_output_chars": limits.max_output_chars, "max_frame": _max_frame(limits),
        "recursion_cap": RECURSION_CAP, "disabled_layers": sorted(_DISABLED_LAYERS),
        "boundary": boundary is not None, "uid": boundary_module.SANDBOX_UID, "disk_bytes": limits.disk_bytes,
    }
    argv = [*prefix, python, "-S", "-s", "-B", "-P", "-c", _child_source(), json.dumps(config)]
    try:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            cwd=work if boundary is None else "/", env=_child_env(work), pass_fds=(cmd_r, res_w), close_fds=True,
            start_new_session=True,
        )
    except BaseException as exc:
        log.close()
        for fd in (cmd_w, res_r):
            os.close(fd)
        if isinstance(exc, OSError):
            raise SandboxError(f"cannot execute the sandbox interpreter {argv[0]}: {exc}") from exc
        raise
    finally:
        for fd in (cmd_r, res_w):   # the child's ends: EOF must mean the child is gone
            os.close(fd)
    os.set_blocking(cmd_w, False)
    process = _Process(popen, cmd_w, res_r, bwrapped=boundary is not None)
    try:
        hello = process.recv(time.monotonic() + STARTUP_TIMEOUT_S, _max_frame(limits))
    except (_Timeout, _Gone, _ProtocolError) as exc:
        process.stop()
        raise SandboxError(f"the sandbox interpreter did not start ({type(exc).__name__}): "
                           f"{_log_tail(log)}") from None
    finally:
        log.close()
    if hello.get("op") != "hello":
        process.stop()
        raise SandboxError(f"the sandbox interpreter failed to harden itself: {hello.get('error')}")
    child_layers = set(hello.get("layers") or ())
    process.layers = tuple(layer for layer in LAYERS if layer in _PARENT_LAYERS or layer in child_layers
                           or (boundary is not None and layer in BOUNDARY_LAYERS))
    process.notes = tuple(str(note) for note in hello.get("notes") or ())
    return process


def _log_tail(log) -> str:
    try:
        log.seek(0)
        return log.read()[-2000:].decode("utf-8", "replace") or "(no output)"
    except (OSError, ValueError):
        return "(no log)"


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
        self.process: _Process | None = None

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
                 limits: SandboxLimits = SandboxLimits(), unconfined: bool = False) -> None:
        """`unconfined=True` runs model code without the bwrap boundary: trusted development only."""
        tools = dict(tools or {})
        for name, fn in tools.items():
            if not name.isidentifier() or name == "final_answer_print" or not callable(fn):
                raise ValueError(f"invalid tool {name!r}: needs an identifier name and a callable")
        self._tools = tools
        self._limits = limits
        self._unconfined = unconfined
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
            except _Timeout:
                restore = self._restart_and_restore()
                timeout = f"{self._limits.step_timeout_s:g}"
                return self._result(f"Error: execution timed out after {timeout}s. {restore}",
                                    None, "timeout", started)
            except (_Gone, _ProtocolError) as exc:
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

    def _ensure_started(self) -> _Process:
        res = self._res
        if res.process is None:
            boundary = None
            if self._unconfined:
                if res.work is None:
                    res.work = os.path.realpath(tempfile.mkdtemp(prefix="score-sandbox-"))
            else:
                boundary = boundary_module.check(_base_python())
                if not boundary.ok:   # fail closed: no boundary, no code execution
                    raise SandboxError(f"{boundary.problem}; {boundary_module.UNCONFINED_HINT}")
            res.process = _spawn(res.work, sorted(self._tools), self._limits, boundary)
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
        max_frame = _max_frame(self._limits)
        process.send({"op": "run", "id": run_id, "code": code}, deadline)
        while True:
            frame = process.recv(deadline, max_frame)
            if frame.get("op") == "tool":   # model code may send these itself: they only call tools
                process.send(self._call_tool(frame), deadline)
            elif frame.get("op") == "done":
                if frame.get("id") != run_id:   # only the bootstrap knows the id (see _sandbox_child._serve)
                    raise _ProtocolError("a result frame with a wrong step id")
                return _validated_done(frame)
            else:
                raise _ProtocolError(f"an unexpected {str(frame.get('op'))[:40]!r} frame")

    def _call_tool(self, frame: dict) -> dict:
        name, args, kwargs = frame.get("name"), frame.get("args"), frame.get("kwargs")
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _ProtocolError("a malformed tool request")
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
        if isinstance(exc, _ProtocolError):
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
            except (_Timeout, _Gone, _ProtocolError) as exc:
                why = "timeout" if isinstance(exc, _Timeout) else "the interpreter stopped"
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
        raise _ProtocolError("a malformed result frame")
    return frame


def _printable(text: str) -> str:
    """Lone surrogates (from odd prints) would break UTF-8 encoding downstream."""
    return text.encode("utf-8", "replace").decode("utf-8")


def sandbox_report(*, unconfined: bool = False) -> dict[str, Any]:
    """What model code runs inside on this host, for /ready and the start-up log: probed once per process.

    `ok` False means code execution is refused, and `problem` says what is missing and how to provide it."""
    if unconfined:
        logger.warning("SANDBOX UNCONFINED (SCORE_SANDBOX_UNCONFINED=1): model code runs WITHOUT the bwrap "
                       "boundary, with only in-process layers. Trusted development only; never in production.")
        boundary = boundary_module.Boundary(True, "none", problem=None)
    else:
        boundary = boundary_module.check(_base_python())
    report: dict[str, Any] = {"ok": boundary.ok, "boundary": "bwrap" if boundary.mode != "none" else "none",
                              "mode": "unconfined" if unconfined else boundary.mode,
                              "bwrap": boundary.bwrap_version,
                              "nested_userns_blocked_by": boundary.nested_userns_blocked_by,
                              "problem": None if boundary.ok else
                              f"{boundary.problem}; {boundary_module.UNCONFINED_HINT}"}
    layers: tuple[str, ...] = ()
    if boundary.ok:
        try:
            with Sandbox(unconfined=unconfined) as sandbox:
                layers = sandbox.isolation
                for note in sandbox._res.process.notes:
                    logger.info("sandbox layer inactive: %s", note)
        except (SandboxError, OSError) as exc:
            report.update(ok=False, problem=f"the sandbox probe failed: {exc}")
    report["layers"] = {layer: layer in layers for layer in LAYERS}
    return report


def prepare_service(*, unconfined: bool = False) -> dict[str, Any]:
    """At a model service's start: make the service process undumpable, check the boundary, log loudly."""
    undumpable = boundary_module.make_service_undumpable()
    if not undumpable:
        logger.warning("could not make the service process undumpable (PR_SET_DUMPABLE)")
    report = {**sandbox_report(unconfined=unconfined), "service_undumpable": undumpable}
    if not report["ok"]:
        logger.error("MODEL CODE EXECUTION REFUSED: %s", report["problem"])
    return report
