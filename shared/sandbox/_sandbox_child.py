"""Bootstrap of the sandboxed interpreter: the child side of `shared/sandbox/process.py`.

The parent starts this file's *text* as
`<base python> -S -s -B -P -c <source> <config json>` with a scrubbed environment,
inside the bubblewrap boundary (see `shared/sandbox/boundary.py`): its own read-only
root holding only the interpreter, the stdlib and the shared libraries, a
size-limited tmpfs work dir, no /proc, no network, its own pids, uid 65534.
Only the standard library is importable.  Before any model code runs the
bootstrap adds layers of its own, as defence in depth behind that boundary:

  boundary self-check -> rlimits -> RLIMIT_NPROC=0 -> no_new_privs + seccomp -> audit hook

then serves length-prefixed (4-byte big-endian) JSON frames on two inherited pipes:

  parent -> child  {"op": "run", "id", "code"}
                   {"op": "tool_result", "ok", "value" | "error"}
  child -> parent  {"op": "hello", "layers", "notes"} or {"op": "fatal", "error"}   (once)
                   {"op": "tool", "name", "args", "kwargs"}
                   {"op": "done", "id", "status", "output", "total", "error", "final_answer"}

Model code shares this interpreter, so it can write frames of its own and rebind
module globals.  Two things keep that harmless:
  - the step id, which the parent checks on `done`, is never stored where Python
    code can reach it while the step runs: it travels through C-level iterators
    (see `_serve`), not through a frame, a closure or an attribute;
  - the audit hook keeps its policy in positional defaults (immutable values, and
    rebinding `__defaults__` is itself an audited event it refuses), not in closure
    cells, which CPython lets any code rewrite.
Neither is the boundary: if model code gets past both, it is still inside bwrap.
"""

import builtins
import collections
import functools
import io
import itertools
import json
import operator
import os
import posix
import resource
import struct
import sys
import types

_HEADER = struct.Struct("!I")
_STEP_FILENAME = "<step>"
_MAX_ERROR_CHARS = 2000
_MAX_FINAL_ANSWER_CHARS = 65536
AT_FDCWD = -100   # what CPython passes as dir_fd when none was given


# --------------------------------------------------------------------------- framing

def _read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv(fd):
    """The next frame from the parent, or None when the parent has gone."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    body = _read_exact(fd, _HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def _send_raw(fd, payload):
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view):]


def _send(fd, frame):
    _send_raw(fd, json.dumps(frame).encode("utf-8"))


# --------------------------------------------------------------------------- OS layers

PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 22, 38, 2

# Per-architecture syscall numbers (from asm/unistd_64.h and asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {
        "audit_arch": 0xC000003E, "x32_bit": 0x40000000,
        "clone": 56, "clone3": 435, "kill": 62, "tkill": 200, "tgkill": 234,
        "deny": (59, 322, 57, 58, 41, 53, 101, 310, 311, 434, 424, 438, 272, 308, 165, 166, 155, 161,
                 250, 248, 249, 321, 298, 323, 425, 426, 427, 246, 320, 175, 313, 176, 304, 303, 135,
                 428, 429, 430, 431, 432, 433, 442, 129, 297,
                 # scheduling of any process: setpriority, sched_setparam, sched_setscheduler,
                 # sched_setaffinity, sched_setattr, ioprio_set, migrate_pages, move_pages
                 141, 142, 144, 203, 314, 251, 256, 279),
    },
    "aarch64": {  # same list as above in asm-generic numbering (no fork/vfork there)
        "audit_arch": 0xC00000B7, "x32_bit": None,
        "clone": 220, "clone3": 435, "kill": 129, "tkill": 130, "tgkill": 131,
        "deny": (221, 281, 198, 199, 117, 270, 271, 434, 424, 438, 97, 268, 40, 39, 41, 51,
                 219, 217, 218, 280, 241, 282, 425, 426, 427, 104, 294, 105, 273, 106, 265, 264, 92,
                 428, 429, 430, 431, 432, 433, 442, 138, 240,
                 140, 118, 119, 122, 274, 30, 238, 239),
    },
}


def _load_libc():
    try:
        import ctypes
        return ctypes, ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None, None


def _errno_call(ctypes, fn, *args):
    """Call a libc function; raise OSError with errno on failure."""
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _verify_boundary(cfg):
    """Inside bwrap, check what the parent asked for before trusting it: fail closed if it is not so."""
    problems = []
    if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"]:
        problems.append(f"runs as uid {os.geteuid()}, not {cfg['uid']}")
    if os.path.exists("/proc/self"):
        problems.append("a /proc is visible")
    if os.getcwd() != cfg["work_dir"]:
        problems.append(f"the work dir is {os.getcwd()}, not {cfg['work_dir']}")
    st = os.statvfs(cfg["work_dir"])
    if st.f_blocks * st.f_frsize > cfg["disk_bytes"] + 2**20:
        problems.append("the work dir is not the size-limited tmpfs")
    if problems:
        raise RuntimeError("the boundary is not what was asked for: " + "; ".join(problems))


def _apply_rlimits(cfg):
    cpu = int(cfg["cpu_time_s"])
    # Soft limit -> SIGXCPU (terminates), hard limit one second later -> SIGKILL.
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (cfg["memory_bytes"],) * 2),
        (resource.RLIMIT_FSIZE, (cfg["max_file_bytes"],) * 2),
        (resource.RLIMIT_NOFILE, (cfg["max_open_files"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    for which, value in limits:
        resource.setrlimit(which, value)


def _forbid_children(notes):
    """RLIMIT_NPROC=0, then prove it: a fork must fail (root ignores the limit)."""
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (OSError, ValueError) as exc:
        notes.append(f"no-child-processes: {exc}")
        return False
    try:
        pid = os.fork()
    except OSError:
        return True
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    notes.append("no-child-processes: RLIMIT_NPROC is not enforced for this user")
    return False


def _seccomp_program(table, own_pid):
    """A classic-BPF filter: EPERM for exec, fork, sockets, ptrace, namespaces, mounts, signals to others,
    and for changing the scheduling of any process.

    clone() is allowed only with CLONE_THREAD (threads), clone3 gets ENOSYS so libc
    falls back to clone(); kill/tkill/tgkill only towards this process.
    """
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
    EPERM, ENOSYS, CLONE_THREAD = 1, 38, 0x00010000
    NR, ARCH, ARG0 = 0, 4, 16  # offsets in struct seccomp_data (little-endian low word of args[0])
    prog = [(LD, 0, 0, ARCH), (JEQ, 1, 0, table["audit_arch"]), (RET, 0, 0, KILL), (LD, 0, 0, NR)]
    if table["x32_bit"]:
        prog.append((JGE, "kill", 0, table["x32_bit"]))
    prog += [(JEQ, "deny", 0, nr) for nr in table["deny"]]
    prog.append((JEQ, "enosys", 0, table["clone3"]))
    for name in ("kill", "tkill", "tgkill"):
        prog += [(JEQ, 0, 2, table[name]), (LD, 0, 0, ARG0), (JEQ, "allow", "deny", own_pid)]
    prog += [(JEQ, 0, 2, table["clone"]), (LD, 0, 0, ARG0), (JSET, "allow", "deny", CLONE_THREAD)]
    labels = {"allow": ALLOW, "deny": ERRNO | EPERM, "enosys": ERRNO | ENOSYS, "kill": KILL}
    position = {name: len(prog) + i for i, name in enumerate(labels)}
    prog += [(RET, 0, 0, value) for value in labels.values()]

    def offset(i, target):
        if isinstance(target, int):
            return target
        jump = position[target] - i - 1
        assert 0 <= jump < 256, "seccomp jump out of range"
        return jump

    return b"".join(struct.pack("=HBBI", code, offset(i, jt), offset(i, jf), k)
                    for i, (code, jt, jf, k) in enumerate(prog))


def _install_seccomp(ct, notes):
    ctypes, libc = ct
    table = _SYSCALLS.get(os.uname().machine)
    if table is None:
        notes.append(f"seccomp: no syscall table for {os.uname().machine}")
        return False
    code = _seccomp_program(table, os.getpid())
    filters = ctypes.create_string_buffer(code, len(code))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(code) // 8, ctypes.addressof(filters))
    ulong = ctypes.c_ulong
    try:
        # no_new_privs: required for an unprivileged filter, and nothing may gain privileges anyway.
        _errno_call(ctypes, libc.prctl, PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0))
        _errno_call(ctypes, libc.prctl, PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER),
                    ctypes.c_void_p(ctypes.addressof(fprog)), ulong(0), ulong(0))
    except OSError as exc:
        notes.append(f"seccomp: {exc.strerror}")
        return False
    return True


def _forget_ctypes():
    """ctypes was only needed for setup: unload it so model code must re-import it (blocked)."""
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.") or m == "_ctypes"]:
        del sys.modules[name]


# --------------------------------------------------------------------------- audit hook

_BLOCKED_MODULES = frozenset({
    "ctypes", "_ctypes", "_ctypes_test", "socket", "_socket", "ssl", "_ssl", "subprocess",
    "_posixsubprocess", "multiprocessing", "_multiprocessing", "_posixshmem", "pty",
    "_xxsubinterpreters", "_xxinterpchannels", "_testcapi", "_testinternalcapi", "_testbuffer",
    "_testimportmultiple", "_testmultiphase", "_testclinic", "_xxtestfuzz",
})
_PROCESS_EVENTS = frozenset({
    "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "os.startfile",
    "subprocess.Popen", "pty.spawn",
})
_NETWORK_EVENTS = frozenset({
    "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect", "poplib.connect",
    "imaplib.open", "nntplib.connect", "telnetlib.Telnet.open", "webbrowser.open",
})
_INTROSPECTION_EVENTS = frozenset({
    # gc walks would reach the bootstrap's internals; sub-interpreters start without our hook;
    # hand-made code objects (and bytecode from marshal.load) can corrupt memory; rlimits and
    # scheduling are not the code's to change.
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "cpython.PyInterpreterState_New",
    "code.__new__", "resource.setrlimit", "resource.prlimit", "sqlite3.enable_load_extension",
    "sqlite3.load_extension", "os.symlink", "marshal.load", "sys._current_frames",
})
# Attributes whose rebinding would change what a function runs or which defaults it uses.
_FUNCTION_INTERNALS = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__closure__", "__globals__"})
# event -> (indexes of path arguments, index of their dir_fd or None, needs write access)
_PATH_EVENTS = {
    "os.listdir": ((0,), None, False), "os.scandir": ((0,), None, False),
    # chdir only to the work dir itself: with the cwd pinned there (and no symlinks, and no
    # directory fds from outside it) a dir_fd-relative open cannot resolve differently from
    # what the hook checked, because the "open" event does not report its dir_fd.
    "os.chdir": ((0,), None, "chdir"),
    "os.remove": ((0,), 1, True), "os.rmdir": ((0,), 1, True), "os.mkdir": ((0,), 2, True),
    "os.chmod": ((0,), 2, True), "os.chown": ((0,), 3, True), "os.utime": ((0,), 3, True),
    "os.truncate": ((0,), None, True), "os.mkfifo": ((0,), 2, True), "os.mknod": ((0,), 3, True),
    "os.chflags": ((0,), None, True), "os.lchflags": ((0,), None, True),
    "os.setxattr": ((0,), None, True), "os.removexattr": ((0,), None, True),
    "os.rename": ((0, 1), 2, True), "os.link": ((0, 1), 2, True),
    "shutil.rmtree": ((0,), None, True), "sqlite3.connect": ((0,), None, True),
}


def _within(path, roots, _len=len):
    for root in roots:
        if path == root or (path.startswith(root) and path[_len(root):_len(root) + 1] == "/"):
            return True
    return False


def _realpath(path, base, _lstat=posix.lstat, _readlink=posix.readlink, _getcwd=posix.getcwd,
              _OSError=OSError, _reversed=reversed, _list=list, _join="/".join):
    """Absolute path with symlinks resolved (as far as they exist), from audited-safe primitives."""
    if not path.startswith("/"):
        path = (base if base is not None else _getcwd()) + "/" + path
    pending = _list(_reversed(path.split("/")))
    parts, hops = [], 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        candidate = "/" + _join(parts + [part])
        try:
            mode = _lstat(candidate).st_mode
        except _OSError:
            parts.append(part)
            continue
        if mode & 0o170000 == 0o120000:
            hops += 1
            if hops > 40:
                return None
            target = _readlink(candidate)
            if target.startswith("/"):
                parts = []
            pending.extend(_reversed(target.split("/")))
            continue
        parts.append(part)
    return "/" + _join(parts)


def _as_text(p, path_types, _type=type, _str=str, _bytes=bytes, _isinstance=isinstance, _fspath=posix.fspath,
             _direntry=posix.DirEntry, _concat=str.__add__, _decode=bytes.decode):
    """The path an OS call will really use, without running model-defined code; None if unknowable."""
    t = _type(p)
    if t is _str:
        return p
    if _isinstance(p, _str):
        return _concat("", p)  # an exact copy (no __radd__): a str subclass cannot change what C reads
    if _isinstance(p, _bytes):
        return _decode(p, "utf-8", "surrogateescape")
    if t is _direntry:
        return _fspath(p)
    for cls, fspath, to_str in path_types:
        # Only unpatched pathlib classes: a custom __fspath__ could answer differently
        # to the hook and to the real call that follows it.
        if t is cls and t.__fspath__ is fspath and t.__str__ is to_str:
            text = _fspath(p)
            return text if _type(text) is _str else None
    return None


def _dir_of_fd(fd, _readlink=posix.readlink, _getcwd=posix.getcwd, _OSError=OSError, _str=str):
    if fd == AT_FDCWD:
        return _getcwd()
    try:
        return _readlink("/proc/self/fd/" + _str(fd))
    except _OSError:
        return None


def _make_audit_hook(cfg, path_types):
    """Build the hook.  Policy: reads only from an allow-list, writes only in the work dir.

    Every value the hook functions use is a positional default, bound here once: module
    globals can be rebound by model code, closure cells can be rewritten, but a function's
    `__defaults__` is an immutable tuple whose replacement is refused below.
    """
    work = os.path.realpath(cfg["work_dir"])
    stdlib = tuple(os.path.realpath(p) for p in cfg["stdlib_dirs"] if os.path.exists(p))
    read_roots = stdlib + tuple(p for p in ("/usr/share/zoneinfo",) if os.path.exists(p)) + (work,)
    read_files = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
    hidden = tuple(r + "/" + name for r in stdlib for name in ("site-packages", "dist-packages"))
    write_mask = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    import _frozen_importlib_external
    compile_bytecode = _frozen_importlib_external._compile_bytecode.__code__

    def check_path(event, p, dir_fd, access, _int=int, _isinstance=isinstance, _lstat=posix.lstat,
                   _OSError=OSError, _PermissionError=PermissionError, _repr=repr, _as_text=_as_text,
                   _dir_of_fd=_dir_of_fd, _realpath=_realpath, _within=_within, _path_types=path_types,
                   _work=(work,), _read_roots=read_roots, _read_files=read_files, _hidden=hidden):
        if p is None:        # os.listdir() / os.scandir(): the current directory
            p = "."
        if _isinstance(p, _int):
            if access == "chdir":
                raise _PermissionError(f"blocked by sandbox: {event} to a file descriptor")
            return           # an fd that was already opened through this hook
        text = _as_text(p, _path_types)
        if text is None:
            raise _PermissionError(f"blocked by sandbox: {event} with an unsupported path-like object")
        base = None
        if dir_fd is not None and not text.startswith("/"):
            base = _dir_of_fd(dir_fd)
            if base is None:
                # No /proc inside the boundary to name the directory: refuse only what could leave it.
                if text.startswith("..") or "/../" in text:
                    raise _PermissionError(f"blocked by sandbox: {event}({_repr(text)}) relative to a dir_fd")
                return
        real = _realpath(text, base)
        if real is None:
            raise _PermissionError(f"blocked by sandbox: {event}({_repr(text)}): too many symlinks")
        if access == "chdir":
            allowed = real == _work[0]
        elif access:
            allowed = real == "/dev/null" or _within(real, _work)
        else:
            allowed = (real in _read_files or _within(real, _read_roots)) and not _within(real, _hidden)
        if allowed and event == "open" and not _within(real, _work):
            # Directory fds outside the work dir would let dir_fd-relative opens (whose
            # dir_fd the "open" event does not report) escape the policy.
            try:
                allowed = _lstat(real).st_mode & 0o170000 != 0o040000
            except _OSError:
                pass
        if not allowed:
            how = (" for writing" if access else " for reading") if event == "open" else ""
            raise _PermissionError(f"blocked by sandbox: {event}({_repr(text)}){how}")

    def trusted_bytecode(data, _getframe=sys._getframe, _code=compile_bytecode, _str=str, _type=type,
                         _realpath=_realpath, _within=_within, _stdlib=stdlib, _hidden=hidden, _open=posix.open,
                         _read=posix.read, _close=posix.close, _flags=os.O_RDONLY | os.O_NOFOLLOW,
                         _OSError=OSError, _ValueError=ValueError, _join=b"".join):
        """marshal.loads is allowed only for the importer reading a stdlib .pyc, and only for its exact bytes."""
        try:
            frame = _getframe(2)   # 0: here, 1: the hook, 2: whoever called marshal.loads
        except _ValueError:
            return False
        if frame.f_code is not _code:
            return False
        path = frame.f_locals.get("bytecode_path")
        if _type(path) is not _str:
            return False
        real = _realpath(path, None)
        if real is None or not _within(real, _stdlib) or _within(real, _hidden):
            return False
        try:
            fd = _open(real, _flags)
        except _OSError:
            return False
        try:
            chunks = []
            while True:
                chunk = _read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            _close(fd)
        return _join(chunks)[16:] == data

    def hook(event, args, _processes=_PROCESS_EVENTS, _network=_NETWORK_EVENTS,
             _introspection=_INTROSPECTION_EVENTS, _paths=types.MappingProxyType(dict(_PATH_EVENTS)),
             _modules=_BLOCKED_MODULES, _internals=_FUNCTION_INTERNALS, _own_pid=os.getpid(),
             _write_mask=write_mask, _isinstance=isinstance, _str=str, _int=int, _function=types.FunctionType,
             _PermissionError=PermissionError, _len=len, _check=check_path, _concat=str.__add__,
             _trusted_bytecode=trusted_bytecode, _lower=str.lower,
             _ours=frozenset({"_within", "_realpath", "_as_text", "_dir_of_fd"})):
        if event == "open":
            path, _mode, flags = args
            # flags is always an int from CPython; anything else is treated as a write (fail closed).
            writing = not _isinstance(flags, _int) or bool(flags & _write_mask)
            _check("open", path, None, writing)
        elif event in _paths:
            indexes, fd_index, access = _paths[event]
            dir_fd = args[fd_index] if fd_index is not None and fd_index < _len(args) else None
            for i in indexes:
                _check(event, args[i], dir_fd if _isinstance(dir_fd, _int) else None, access)
            # (ATTACH and VACUUM INTO name files the hook never sees: the boundary leaves them /work only.)
            if event == "sqlite3.connect" and _isinstance(args[0], _str) and _lower(args[0]).startswith("file:"):
                raise _PermissionError("blocked by sandbox: sqlite3 URI filenames")
        elif event == "marshal.loads":
            if not _trusted_bytecode(args[0]):
                raise _PermissionError("blocked by sandbox: marshal.loads (code from bytes)")
        elif event == "object.__setattr__":
            # Only the bootstrap's own functions: namedtuple and typing set __defaults__ legitimately.
            if _isinstance(args[0], _function) and args[1] in _internals:
                code = args[0].__code__
                if code.co_filename == "<string>" and (code.co_qualname in _ours
                                                       or code.co_qualname.startswith("_make_audit_hook.")):
                    raise _PermissionError(f"blocked by sandbox: rebinding {args[1]} of the sandbox's own code")
        elif event == "import":
            name = args[0]
            if _isinstance(name, _str):
                name = _concat("", name)   # a str subclass could fake its hash and equality
            if not _isinstance(name, _str) or name in _modules or name.split(".")[0] in _modules:
                raise _PermissionError(f"blocked by sandbox: import {name}")
        elif event == "os.kill" or event == "os.killpg":
            if args[0] != _own_pid:   # our pid is also our process group (new session)
                raise _PermissionError(f"blocked by sandbox: {event} of another process")
        elif (event in _processes or event in _network or event in _introspection
              or event.startswith("socket.") or event.startswith("ctypes.")):
            raise _PermissionError(f"blocked by sandbox: {event}")

    return hook


def _path_types():
    """(class, original __fspath__, original __str__) for the pathlib classes the hook trusts."""
    import pathlib
    return tuple((cls, cls.__fspath__, cls.__str__) for cls in (pathlib.PosixPath, pathlib.PurePosixPath))


def _guard_python_level(cfg):
    """Best-effort guards for calls that raise no audit event (model code can undo them)."""
    cap = int(cfg["recursion_cap"])

    def setrecursionlimit(limit, *, _orig=sys.setrecursionlimit, _cap=cap):
        if limit > _cap:
            raise PermissionError(f"blocked by sandbox: sys.setrecursionlimit above {_cap}")
        _orig(limit)

    def signal(signalnum, handler):
        raise PermissionError("blocked by sandbox: signal.signal")

    sys.setrecursionlimit = setrecursionlimit
    for name in ("_signal", "signal"):   # `import signal` copies signal() from _signal
        module = sys.modules.get(name)
        if module is not None:
            module.signal = signal


# --------------------------------------------------------------------------- hardening

def _harden(cfg):
    """Check the boundary, then apply the in-process layers; return (active layer names, notes)."""
    layers, notes = [], []
    wanted = lambda layer: layer not in cfg["disabled_layers"]  # noqa: E731  (tests switch layers off)
    os.umask(0o022)
    if cfg["boundary"]:
        _verify_boundary(cfg)
    _apply_rlimits(cfg)
    layers.append("rlimits")
    if wanted("no-child-processes") and _forbid_children(notes):
        layers.append("no-child-processes")
    ct = _load_libc()
    if ct[0] is None:
        notes.append("seccomp: ctypes unavailable")
    elif wanted("seccomp") and _install_seccomp(ct, notes):
        layers.append("seccomp")
    del ct
    _forget_ctypes()
    if wanted("audit-hooks"):
        path_types = _path_types()
        _guard_python_level(cfg)
        sys.addaudithook(_make_audit_hook(cfg, path_types))
        layers.append("audit-hooks")
    return layers, notes


# --------------------------------------------------------------------------- running steps

class ToolError(Exception):
    """A parent-side tool failed; the message says which and why."""


class _Capture(io.TextIOBase):
    """stdout+stderr of a step, in order; stores at most `cap` characters, counts the rest."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, cap):
        self.cap = cap
        self.reset()

    def reset(self):
        self.parts, self.kept, self.total = [], 0, 0

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.total += len(s)
        room = self.cap - self.kept
        if room > 0:
            piece = s[:room]
            self.parts.append(piece)
            self.kept += len(piece)
        return len(s)

    def writable(self):
        return True

    def isatty(self):
        return False

    @property
    def buffer(self):
        return _BinaryCapture(self)

    def text(self):
        return "".join(self.parts)


class _BinaryCapture:
    """`sys.stdout.buffer`: bytes are decoded into the same capture."""

    def __init__(self, text_capture):
        self._text = text_capture

    def write(self, data):
        self._text.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self):
        pass


class _Step:
    """What the current run() call has produced so far (shared with the model-visible helpers).

    Deliberately without the step id: model code can reach this object."""

    def __init__(self, cap):
        self.final_answer = None
        self.capture = _Capture(cap)


def _safe_str(value):
    try:
        return str(value)
    except BaseException:
        return "<unprintable>"


def _step_line(tb):
    """Line of the innermost frame that belongs to the step's own code."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _STEP_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(exc, line):
    name = type(exc).__name__
    message = _safe_str(exc)[:_MAX_ERROR_CHARS]
    text = f"Error: {name}: {message}" if message else f"Error: {name}"
    return text + (f" (line {line})" if line else "")


def _run_step(code, *, namespace, step):
    step.capture.reset()
    step.final_answer = None
    sys.stdout = sys.stderr = sys.__stdout__ = sys.__stderr__ = step.capture
    try:
        compiled = compile(code, _STEP_FILENAME, "exec")
    except SyntaxError as exc:   # the step itself does not parse
        return "error", _describe(type(exc)(exc.msg), exc.lineno)
    except BaseException as exc:  # e.g. MemoryError, or RecursionError on absurd nesting
        return "error", _describe(exc, None)
    try:
        exec(compiled, namespace)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the step failed, not the sandbox
        return "error", _describe(exc, _step_line(exc.__traceback__))
    return "ok", None


def _make_helpers(step, cmd_fd, res_fd, tool_names, max_frame):
    """final_answer_print and one proxy per parent-side tool, for the model's namespace."""

    def final_answer_print(answer):
        text = str(answer)
        step.capture.write(text + "\n")
        if step.final_answer is None:
            step.final_answer = text[:_MAX_FINAL_ANSWER_CHARS]

    def make_tool(name):
        def tool(*args, **kwargs):
            try:
                payload = json.dumps({"op": "tool", "name": name, "args": args, "kwargs": kwargs})
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name}() arguments must be JSON-serialisable ({exc})") from None
            if len(payload) > max_frame:
                raise ValueError(f"{name}() arguments are too large")
            _send_raw(res_fd, payload.encode("utf-8"))
            reply = _recv(cmd_fd)
            if reply is None:
                os._exit(0)
            if reply.get("ok"):
                return reply.get("value", "")
            raise ToolError(f"{name}: {reply.get('error', 'failed')}")

        tool.__name__ = tool.__qualname__ = name
        return tool

    helpers = {"final_answer_print": final_answer_print}
    helpers.update({name: make_tool(name) for name in tool_names})
    return helpers


# --------------------------------------------------------------------------- serving steps

def _next_run(cmd_fd):
    """The next `run` frame (stale tool results are skipped), or None when the parent has gone."""
    while True:
        message = _recv(cmd_fd)
        if message is None or message.get("op") == "run":
            return message


def _send_done(res_fd, step, run_id, outcome):
    status, error = outcome
    frame = {"op": "done", "id": run_id, "status": status, "output": step.capture.text(),
             "total": step.capture.total, "error": error, "final_answer": step.final_answer}
    try:
        _send(res_fd, frame)
    except MemoryError:
        # Whatever the code left behind fills the address space; report without the output.
        step.capture.reset()
        frame.update(output="", total=0, error=(error or "") + " [output dropped: out of memory]")
        _send(res_fd, frame)


def _ids_and_outcomes(pair, run):
    """Two lazy streams over the same run frames: their ids, and the outcomes of running their code."""
    for_ids, for_code = pair
    return map(operator.itemgetter("id"), for_ids), map(run, map(operator.itemgetter("code"), for_code))


def _serve(cfg):
    cmd_fd, res_fd = cfg["cmd_fd"], cfg["res_fd"]
    step = _Step(int(cfg["max_output_chars"]))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update(_make_helpers(step, cmd_fd, res_fd, cfg["tools"], int(cfg["max_frame"])))
    # One expression, no local names: the step id goes from the frame reader to `_send_done` through
    # C-level iterators (tee, map) that live only on this frame's value stack. While model code runs,
    # no Python frame, closure or attribute holds the id, so the code cannot forge the step's `done`.
    collections.deque(map(functools.partial(_send_done, res_fd, step),
                          *_ids_and_outcomes(itertools.tee(iter(functools.partial(_next_run, cmd_fd), None)),
                                             functools.partial(_run_step, namespace=namespace, step=step))),
                      maxlen=0)
    os._exit(0)   # the parent has gone


def _stdlib_dirs():
    """This interpreter's own import path (stdlib, lib-dynload), nested entries folded."""
    found = []
    for path in sorted({os.path.realpath(p) for p in sys.path if p and os.path.exists(p)}, key=len):
        if not any(path.startswith(seen + "/") for seen in found):
            found.append(path)
    return found


def _main():
    cfg = json.loads(sys.argv[1])
    cfg["stdlib_dirs"] = _stdlib_dirs()
    sys.argv[:] = [""]
    try:
        layers, notes = _harden(cfg)
    except BaseException as exc:
        _send(cfg["res_fd"], {"op": "fatal", "error": f"{type(exc).__name__}: {exc}"})
        os._exit(70)
    _send(cfg["res_fd"], {"op": "hello", "layers": layers, "notes": notes})
    try:
        _serve(cfg)
    except BaseException:
        os._exit(71)   # the control pipe is unusable (closed, garbage): the parent restarts us


_main()
