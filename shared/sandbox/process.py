"""The sandbox's child process: starting one interpreter, the framed control pipe, and why it stopped.

`spawn()` starts one stdlib-only interpreter (inside the bwrap command line of `boundary.py`, or unconfined
in a host work dir), passes it `_sandbox_child.py` and its limits, and waits for the child's `hello` frame,
which lists the layers it set up. `Process` holds the parent's ends of the two pipes: length-prefixed JSON
frames with deadlines, and a SIGKILL of the whole process group when it ends.  `sandbox.py` drives it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time

from shared.sandbox import boundary as boundary_module
from shared.sandbox.limits import SandboxLimits

# What a sandbox has, in order: the boundary's layers (bwrap), the parent's, then the child's own.
BOUNDARY_LAYERS = ("own-filesystem", "no-network", "own-pids", "sandbox-uid", "no-new-privileges", "disk-quota")
_PARENT_LAYERS = ("isolated-python", "scrubbed-env")   # always on: set up here
CHILD_LAYERS = ("rlimits", "no-child-processes", "seccomp", "audit-hooks")
LAYERS = BOUNDARY_LAYERS + _PARENT_LAYERS + CHILD_LAYERS

STARTUP_TIMEOUT_S = 15.0      # generous: a loaded CI box can be slow to exec an interpreter
RECURSION_CAP = 20_000        # highest sys.setrecursionlimit() the child accepts
_HEADER = struct.Struct("!I")
# In-child layers to leave off, for tests only: they check that the boundary holds on its own
# (e.g. with the audit hook off, as if model code had found a way past it).
# Allowed: no-child-processes, seccomp, audit-hooks.
_DISABLED_LAYERS: frozenset[str] = frozenset()
_CHILD_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")


class SandboxError(RuntimeError):
    """The sandbox interpreter could not be started (a deployment problem, not the agent's)."""


class Timeout(Exception):
    pass


class Gone(Exception):
    """The interpreter closed the control pipe (it died, or the code closed the pipe)."""


class ProtocolError(Exception):
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


class Process:
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
                raise Gone() from None

    def recv(self, deadline: float, max_frame: int) -> dict:
        (length,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
        if length > max_frame:
            raise ProtocolError(f"a frame of {length} bytes exceeds the {max_frame}-byte limit")
        body = self._read_exact(length, deadline)
        try:
            frame = json.loads(body)
        except (ValueError, RecursionError):
            raise ProtocolError("a frame that is not valid JSON") from None
        if not isinstance(frame, dict):
            raise ProtocolError("a frame that is not a JSON object")
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
                raise Gone()
            buf += chunk
        return bytes(buf)

    @staticmethod
    def _wait(fd: int, event: int, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout()
        poller = select.poll()   # not select(): a busy service may hold fds above 1024
        poller.register(fd, event)
        if not poller.poll(remaining * 1000):
            raise Timeout()

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


def base_python() -> str:
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


def frame_limit(limits: SandboxLimits) -> int:
    # Output is capped in the child; JSON escapes take at most 12 bytes per character.
    return 2 * 2**20 + 12 * limits.max_output_chars


def spawn(work: str | None, tools: list[str], limits: SandboxLimits, boundary: boundary_module.Boundary | None,
          ) -> Process:
    """Start one interpreter: inside bwrap (`boundary`), or unconfined in the host dir `work`."""
    python = base_python()
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
        "max_output_chars": limits.max_output_chars, "max_frame": frame_limit(limits),
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
    process = Process(popen, cmd_w, res_r, bwrapped=boundary is not None)
    try:
        hello = process.recv(time.monotonic() + STARTUP_TIMEOUT_S, frame_limit(limits))
    except (Timeout, Gone, ProtocolError) as exc:
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

