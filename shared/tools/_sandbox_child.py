"""Bootstrap of the sandboxed interpreter: the child side of `shared/tools/sandbox.py`.

The parent runs this file's *text* as
`<base python> -S -s -B -P -c <source> <config json>` with a scrubbed environment,
so only the standard library is importable (no site-packages, no project code).
Before any model code runs the bootstrap hardens its own process, strongest
layer first, each one optional (a refused layer is skipped and reported):

  rlimits -> namespaces (net, mount) -> minimal read-only root -> drop to nobody
  -> RLIMIT_NPROC=0 -> no_new_privs + seccomp -> audit hook

then serves length-prefixed (4-byte big-endian) JSON frames on two inherited pipes:

  parent -> child  {"op": "run", "id", "code"}
                   {"op": "tool_result", "id", "ok", "value" | "error"}
  child -> parent  {"op": "hello", "layers", "notes"}   (once, after hardening)
                   {"op": "tool", "id", "name", "args", "kwargs"}
                   {"op": "done", "id", "status", "output", "total", "error", "final_answer"}

Model code shares this interpreter, so nothing here is a secret from it: it can
forge frames (the parent validates them and restarts on abuse) and rebind any
module global.  The audit hook is written so that rebinding globals cannot weaken
it: every name it uses is bound as a default argument when it is defined, and no
reference to it survives installation.
"""

import builtins
import io
import json
import os
import posix
import resource
import struct
import sys

_HEADER = struct.Struct("!I")
_STEP_FILENAME = "<step>"
_MAX_ERROR_CHARS = 2000
_MAX_FINAL_ANSWER_CHARS = 65536


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

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 22, 38, 2

# Per-architecture syscall numbers (from asm/unistd_64.h and asm-generic/unistd.h).
_SYSCALLS = {
    "x86_64": {
        "audit_arch": 0xC000003E, "x32_bit": 0x40000000, "pivot_root": 155,
        "clone": 56, "clone3": 435, "kill": 62, "tkill": 200, "tgkill": 234,
        "deny": (59, 322, 57, 58, 41, 53, 101, 310, 311, 434, 424, 438, 272, 308, 165, 166, 155, 161,
                 250, 248, 249, 321, 298, 323, 425, 426, 427, 246, 320, 175, 313, 176, 304, 303, 135,
                 428, 429, 430, 431, 432, 433, 442, 129, 297),
    },
    "aarch64": {  # same list as above in asm-generic numbering (no fork/vfork there)
        "audit_arch": 0xC00000B7, "x32_bit": None, "pivot_root": 41,
        "clone": 220, "clone3": 435, "kill": 129, "tkill": 130, "tgkill": 131,
        "deny": (221, 281, 198, 199, 117, 270, 271, 434, 424, 438, 97, 268, 40, 39, 41, 51,
                 219, 217, 218, 280, 241, 282, 425, 426, 427, 104, 294, 105, 273, 106, 265, 264, 92,
                 428, 429, 430, 431, 432, 433, 442, 138, 240),
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


def _mount(ct, src, target, fstype, flags, data=None):
    ctypes, libc = ct
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _errno_call(ctypes, libc.mount, enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


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


def _enter_namespaces(ct, privileged, want_mount, notes):
    """unshare() a network namespace, and a mount namespace when possible.

    Root unshares directly (a user namespace would keep uid 0 and block the later
    drop to nobody); an unprivileged user needs CLONE_NEWUSER for either.
    Returns (net, mount) booleans.
    """
    ctypes, libc = ct
    base = 0 if privileged else CLONE_NEWUSER
    uid, gid = os.getuid(), os.getgid()
    attempts = [(base | CLONE_NEWNS | CLONE_NEWNET, (True, True))] if want_mount else []
    attempts.append((base | CLONE_NEWNET, (True, False)))
    for flags, result in attempts:
        try:
            _errno_call(ctypes, libc.unshare, flags)
        except OSError as exc:
            last = exc
            continue
        if privileged:
            return result
        try:
            _map_identity(uid, gid)
        except OSError as exc:   # unmapped, we could not create files: no minimal root then
            notes.append(f"fs-namespace: cannot map our uid into the user namespace ({exc.strerror})")
            return True, False
        return result
    notes.append(f"net-namespace: unshare refused ({last.strerror})")
    return False, False


def _map_identity(uid, gid):
    """Map our own uid/gid into the new user namespace (unmapped ids cannot create files)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _read_only_sources(cfg):
    """Host paths the minimal root exposes read-only: stdlib, shared libraries, tz data."""
    sources = list(cfg["stdlib_dirs"])
    sources += ["/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32",
                "/etc/ld.so.cache", "/usr/share/zoneinfo"]
    seen = []
    for path in sorted(sources, key=len):   # parents first, so nested paths are skipped
        if os.path.lexists(path) and not any(path == s or path.startswith(s + "/") for s in seen):
            seen.append(path)
    return seen


def _remount_flags(src, read_only, nodev=True):
    """Flags for a bind remount that keep the source mount's locked flags (noexec, atime)."""
    st = os.statvfs(src).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (MS_RDONLY if read_only else 0) | (MS_NODEV if nodev else 0)
    for st_flag, ms_flag in ((os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if st & st_flag:
            flags |= ms_flag
    return flags


def _bind(ct, root, src, *, read_only=True, device=False):
    target = root + src
    if os.path.islink(src):  # e.g. /lib -> usr/lib on merged-/usr systems
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        os.symlink(os.readlink(src), target)
        return
    if os.path.isdir(src):
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        with open(target, "w"):
            pass
    _mount(ct, src, target, None, MS_BIND)
    _mount(ct, None, target, None, _remount_flags(src, read_only, nodev=not device))


def _enter_minimal_root(ct, cfg, notes):
    """Pivot into a fresh tmpfs root holding only what the interpreter needs.

    Afterwards the host filesystem (project source, /etc, /proc, other episodes'
    directories) does not exist for this process; only the work dir is writable.
    """
    ctypes, libc = ct
    root, work = cfg["root_dir"], cfg["work_dir"]
    try:
        # Private propagation first, so none of the mounts below can leak to the host.
        _mount(ct, None, "/", None, MS_REC | MS_PRIVATE)
        _mount(ct, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
        for src in _read_only_sources(cfg):
            _bind(ct, root, src)
        for dev in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"):
            if os.path.exists(dev):
                _bind(ct, root, dev, read_only=False, device=True)
        _bind(ct, root, work, read_only=False)
        for stdlib in cfg["stdlib_dirs"]:  # hide the base interpreter's third-party packages
            for name in ("site-packages", "dist-packages"):
                if os.path.isdir(root + stdlib + "/" + name):
                    _mount(ct, "tmpfs", root + stdlib + "/" + name, "tmpfs",
                           MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555")
        os.chdir(root)
        # pivot_root(".", ".") stacks the old root on top of the new one; detaching it removes it.
        nr = _SYSCALLS[os.uname().machine]["pivot_root"]
        if libc.syscall(ctypes.c_long(nr), b".", b".") != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        _errno_call(ctypes, libc.umount2, b".", MNT_DETACH)
    except (OSError, KeyError, ValueError) as exc:
        notes.append(f"fs-namespace: {exc}")
        os.chdir(work)
        return False
    os.chdir("/")
    try:
        _mount(ct, None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    except OSError as exc:
        notes.append(f"fs-namespace: root left writable ({exc.strerror})")
    os.chdir(work)
    return True


def _reachable_by_others(path):
    """True when a user with no special rights can traverse to and list `path`."""
    parts = os.path.realpath(path).split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i]) or "/"
        need = 0o005 if i == len(parts) else 0o001
        try:
            if os.stat(prefix).st_mode & need != need:
                return False
        except OSError:
            return False
    return True


def _drop_privileges(cfg, fs_namespace, notes):
    """Root only: become nobody (no supplementary groups); verify it cannot come back."""
    uid, gid = cfg["drop_uid"], cfg["drop_gid"]
    if not fs_namespace and not all(_reachable_by_others(d) for d in cfg["stdlib_dirs"]):
        # e.g. a pyenv under /root (0700): nobody could not import the stdlib any more.
        notes.append("drop-privileges: the stdlib is not readable by nobody without the fs-namespace")
        return False
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        notes.append(f"drop-privileges: {exc}")
        return False
    try:
        os.setuid(0)
    except PermissionError:
        return os.getuid() == uid and os.geteuid() == uid
    notes.append("drop-privileges: could regain uid 0")
    return False


def _drop_capabilities(ct, notes):
    """In a user namespace the process holds every capability *inside* it: drop them all."""
    ctypes, libc = ct
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)   # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()                   # effective/permitted/inheritable, two words: all zero
    try:
        _errno_call(ctypes, libc.capset, header, data)
    except (AttributeError, OSError) as exc:   # seccomp and the hook still forbid what they would allow
        notes.append(f"fs-namespace: capabilities inside the user namespace kept ({exc})")


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
    """A classic-BPF filter: EPERM for exec, fork, sockets, ptrace, namespaces, mounts, signals to others.

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
    # hand-made code objects can corrupt memory; rlimits are not the code's to change.
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "cpython.PyInterpreterState_New",
    "code.__new__", "resource.setrlimit", "resource.prlimit", "sqlite3.enable_load_extension",
    "sqlite3.load_extension", "os.symlink",
})
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


def _make_audit_hook(cfg, os_enforces_fs, path_types):
    """Build the hook.  Policy: reads only from an allow-list, writes only in the work dir."""
    work = os.path.realpath(cfg["work_dir"])
    read_roots = tuple(os.path.realpath(p) for p in
                       [*cfg["stdlib_dirs"], "/usr/share/zoneinfo"] if os.path.exists(p)) + (work,)
    read_files = frozenset({"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"})
    hidden = tuple(r + "/" + name for r in read_roots[:-1] for name in ("site-packages", "dist-packages"))
    write_mask = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def within(path, roots, *, _len=len):
        for root in roots:
            if path == root or (path.startswith(root) and path[_len(root):_len(root) + 1] == "/"):
                return True
        return False

    def realpath(path, base, *, _lstat=posix.lstat, _readlink=posix.readlink, _getcwd=posix.getcwd,
                 _OSError=OSError, _reversed=reversed, _list=list):
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
            candidate = "/" + "/".join(parts + [part])
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
        return "/" + "/".join(parts)

    def as_text(p, *, _type=type, _str=str, _bytes=bytes, _isinstance=isinstance, _fspath=posix.fspath,
                _direntry=posix.DirEntry, _path_types=path_types, _concat=str.__add__):
        """The path an OS call will really use, without running model-defined code; None if unknowable."""
        t = _type(p)
        if t is _str:
            return p
        if _isinstance(p, _str):
            return _concat("", p)  # an exact copy (no __radd__): a str subclass cannot change what C reads
        if _isinstance(p, _bytes):
            return _bytes.decode(p, "utf-8", "surrogateescape")
        if t is _direntry:
            return _fspath(p)
        for cls, fspath, to_str in _path_types:
            # Only unpatched pathlib classes: a custom __fspath__ could answer differently
            # to the hook and to the real call that follows it.
            if t is cls and t.__fspath__ is fspath and t.__str__ is to_str:
                return as_text(_fspath(p))
        return None

    def dir_of_fd(fd, *, _readlink=posix.readlink, _OSError=OSError, _str=str):
        try:
            return _readlink("/proc/self/fd/" + _str(fd))
        except _OSError:
            return None

    def check_path(event, p, dir_fd, access, *, _int=int, _isinstance=isinstance, _lstat=posix.lstat,
                   _OSError=OSError, _PermissionError=PermissionError, _repr=repr):
        if p is None:        # os.listdir() / os.scandir(): the current directory
            p = "."
        if _isinstance(p, _int):
            if access == "chdir":
                raise _PermissionError(f"blocked by sandbox: {event} to a file descriptor")
            return           # an fd that was already opened through this hook
        text = as_text(p)
        if text is None:
            raise _PermissionError(f"blocked by sandbox: {event} with an unsupported path-like object")
        base = None
        if dir_fd is not None and not text.startswith("/"):
            base = dir_of_fd(dir_fd)
            if base is None:
                if os_enforces_fs:
                    return   # no /proc inside the minimal root; the OS layers already confine the call
                raise _PermissionError(f"blocked by sandbox: {event}({_repr(text)}) relative to a dir_fd")
        real = realpath(text, base)
        if real is None:
            raise _PermissionError(f"blocked by sandbox: {event}({_repr(text)}): too many symlinks")
        if access == "chdir":
            allowed = real == work
        elif access:
            allowed = real == "/dev/null" or within(real, (work,))
        else:
            allowed = (real in read_files or within(real, read_roots)) and not within(real, hidden)
        if allowed and event == "open" and not within(real, (work,)):
            # Directory fds outside the work dir would let dir_fd-relative opens (whose
            # dir_fd the "open" event does not report) escape the policy.
            try:
                allowed = _lstat(real).st_mode & 0o170000 != 0o040000
            except _OSError:
                pass
        if not allowed:
            how = (" for writing" if access else " for reading") if event == "open" else ""
            raise _PermissionError(f"blocked by sandbox: {event}({_repr(text)}){how}")

    # The policy tables are module globals that model code could mutate: the hook gets private copies.
    def hook(event, args, *, _processes=_PROCESS_EVENTS, _network=_NETWORK_EVENTS,
             _introspection=_INTROSPECTION_EVENTS, _paths=dict(_PATH_EVENTS), _modules=_BLOCKED_MODULES,
             _own_pid=os.getpid(), _write_mask=write_mask, _isinstance=isinstance, _str=str, _int=int,
             _PermissionError=PermissionError, _len=len, _check=check_path, _concat=str.__add__):
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
    """Apply every layer the host permits; return (active layer names, notes on the others)."""
    layers, notes = [], []
    wanted = lambda layer: layer not in cfg["disabled_layers"]  # noqa: E731  (tests switch layers off)
    os.umask(0o022)
    _apply_rlimits(cfg)
    layers.append("rlimits")
    privileged = os.geteuid() == 0
    ct = _load_libc()
    net_ns = mount_ns = fs_ns = False
    if ct[0] is None:
        notes.append("net-namespace, fs-namespace, seccomp: ctypes unavailable")
    elif wanted("net-namespace"):
        net_ns, mount_ns = _enter_namespaces(ct, privileged, wanted("fs-namespace"), notes)
        if mount_ns:
            fs_ns = _enter_minimal_root(ct, cfg, notes)
    layers += [name for name, on in (("net-namespace", net_ns), ("fs-namespace", fs_ns)) if on]
    if privileged and wanted("drop-privileges") and _drop_privileges(cfg, fs_ns, notes):
        layers.append("drop-privileges")
    elif not privileged and mount_ns:
        _drop_capabilities(ct, notes)
    if wanted("no-child-processes") and _forbid_children(notes):
        layers.append("no-child-processes")
    if ct[0] is not None and wanted("seccomp") and _install_seccomp(ct, notes):
        layers.append("seccomp")
    del ct
    _forget_ctypes()
    if wanted("audit-hooks"):
        path_types = _path_types()
        _guard_python_level(cfg)
        sys.addaudithook(_make_audit_hook(cfg, fs_ns, path_types))
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
    """What the current run() call has produced so far (shared with the model-visible helpers)."""

    def __init__(self, cap):
        self.id = None
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


def _run_step(code, namespace, step):
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
                payload = json.dumps({"op": "tool", "id": step.id, "name": name, "args": args, "kwargs": kwargs})
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


def _serve(cfg):
    cmd_fd, res_fd = cfg["cmd_fd"], cfg["res_fd"]
    step = _Step(int(cfg["max_output_chars"]))
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    namespace.update(_make_helpers(step, cmd_fd, res_fd, cfg["tools"], int(cfg["max_frame"])))
    while True:
        message = _recv(cmd_fd)
        if message is None:
            os._exit(0)
        if message.get("op") != "run":
            continue
        step.id = message["id"]
        status, error = _run_step(message["code"], namespace, step)
        frame = {"op": "done", "id": step.id, "status": status, "output": step.capture.text(),
                 "total": step.capture.total, "error": error, "final_answer": step.final_answer}
        try:
            _send(res_fd, frame)
        except MemoryError:
            # Whatever the code left behind fills the address space; report without the output.
            step.capture.reset()
            frame.update(output="", total=0, error=(error or "") + " [output dropped: out of memory]")
            _send(res_fd, frame)


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
