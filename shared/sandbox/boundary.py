"""The boundary around model code: one bubblewrap (bwrap) sandbox per interpreter, and the start-up check.

Every sandboxed interpreter is started as

    bwrap <namespaces> <a read-only root of only what Python needs> <a size-limited tmpfs at /work> -- python ...

so the code sees its own filesystem (no service files, no SCORE_HOME, no other episodes, no /proc, no /tmp
of the host), no network, its own pids, uid 65534, no capabilities and no way to gain any. Two ways to get
there, chosen by the service's own uid:

- **unprivileged** (the compose deployment: uid 10001, `cap_drop: ALL`, and a CI user): bwrap makes a user
  namespace; uid 65534 inside maps to the service's uid outside. Needs unprivileged user namespaces, which
  Docker's default seccomp profile refuses: deploy/seccomp-sandbox.json allows them (docs/sandbox.md).
- **root** (a developer box): bwrap sets the namespaces up as root without a user namespace, keeping only
  CAP_SETUID/SETGID/SETPCAP, and runs `setpriv` inside to become uid 65534 with no capabilities before the
  interpreter starts, so model code never runs as host uid 0. (Dropping to 65534 *before* bwrap would fail
  where the interpreter lives under a 0700 home, e.g. pyenv under /root.)

Where neither works, `check()` says what is missing and how to provide it; `Sandbox` then refuses to run code
(fail closed) unless the operator set SCORE_SANDBOX_UNCONFINED=1 (trusted development only, logged loudly).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534
WORK_DIR = "/work"
HOSTNAME = "sandbox"
_SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/usr/share/zoneinfo")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
_ROOT_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")   # what setpriv needs, nothing else
_PROBE_TIMEOUT_S = 20.0
_HOW_TO = {
    "missing": "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; `scripts/setup.sh` does it when "
               "run as root, and the image has it)",
    "unprivileged": "allow unprivileged user namespaces: on the host `sysctl -w kernel.unprivileged_userns_clone=1` "
                    "(Debian/Ubuntu) and `user.max_user_namespaces` > 0; on AppArmor hosts with "
                    "kernel.apparmor_restrict_unprivileged_userns=1, a profile that allows `userns`; in Docker, run "
                    "this service with `security_opt: [seccomp=deploy/seccomp-sandbox.json]` (and, where AppArmor is "
                    "enabled, `apparmor=unconfined` or a profile allowing mount and userns), as docker-compose.yml does",
    "root": "as root, bwrap needs CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID and CAP_SETPCAP and `setpriv` (util-linux); "
            "in a container, run the service as a non-root user instead (the image's default, uid 10001)",
}
UNCONFINED_HINT = ("or, for trusted development only, set SCORE_SANDBOX_UNCONFINED=1 to run model code without "
                   "the boundary")


@dataclass(frozen=True)
class Interpreter:
    """The base interpreter the sandbox runs, and the host paths it needs (all real paths)."""

    executable: str
    import_path: tuple[str, ...]     # stdlib and lib-dynload, as `python -S` sees them
    libdir: str | None               # where libpython lives when it is a shared library


@dataclass(frozen=True)
class Boundary:
    """What `check()` found: the bwrap variant that works here, or why none does."""

    ok: bool
    mode: str                        # "unprivileged", "root", or "none" (not available / unconfined)
    bwrap_version: str | None = None
    nested_userns_blocked_by: str | None = None   # "bwrap" (--disable-userns) or "seccomp" (in-child filter)
    problem: str | None = None
    notes: tuple[str, ...] = field(default=())


@functools.lru_cache(maxsize=None)
def interpreter(executable: str) -> Interpreter:
    """Ask the interpreter itself (once) where its stdlib and libpython are."""
    code = ("import json, sys, sysconfig; print(json.dumps([sys.path, sysconfig.get_config_var('LIBDIR') "
            "if sysconfig.get_config_var('Py_ENABLE_SHARED') else None]))")
    out = subprocess.run([executable, "-S", "-s", "-B", "-P", "-c", code], capture_output=True, text=True,
                         timeout=_PROBE_TIMEOUT_S, env={"PATH": "/usr/bin:/bin"}, check=True).stdout
    path, libdir = json.loads(out)
    import_path = tuple(os.path.realpath(p) for p in path if p and os.path.isdir(p))
    return Interpreter(os.path.realpath(executable), import_path,
                       os.path.realpath(libdir) if libdir and os.path.isdir(libdir) else None)


def _fold(paths: list[str]) -> list[str]:
    """Unique paths, parents first, with paths inside another one dropped."""
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(path == k or path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept


def filesystem_args(interp: Interpreter, *, disk_bytes: int, extra_files: tuple[str, ...] = ()) -> list[str]:
    """bwrap arguments for the sandbox's root: read-only interpreter, stdlib and libraries, /work, nothing else."""
    args: list[str] = []
    symlinks = [(os.readlink(d), d) for d in _SYSTEM_LIB_DIRS if os.path.islink(d)]
    system = [d for d in _SYSTEM_LIB_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    sources = _fold([interp.executable, *interp.import_path, *([interp.libdir] if interp.libdir else []),
                     *system, *[p for p in _SYSTEM_FILES if os.path.exists(p)],
                     *[os.path.realpath(p) for p in extra_files]])
    # Parent directories bwrap would otherwise create with the host's modes (a 0700 /root would lock out 65534).
    parents: list[str] = []
    for target in [*sources, *_DEVICES]:
        parts = target.split("/")[1:-1]
        for i in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:i])
            if parent not in parents and not any(parent == s or parent.startswith(s + "/") for s in sources):
                parents.append(parent)
    for parent in parents:
        args += ["--perms", "0755", "--dir", parent]
    for source in sources:
        args += ["--ro-bind", source, source]
    for target, link in symlinks:
        args += ["--symlink", target, link]
    # The base interpreter's own third-party packages stay out of reach.
    for directory in interp.import_path:
        for name in ("site-packages", "dist-packages"):
            hidden = os.path.join(directory, name)
            if os.path.isdir(hidden):
                args += ["--size", "4096", "--perms", "0555", "--tmpfs", hidden, "--remount-ro", hidden]
    for device in _DEVICES:
        if os.path.exists(device):
            args += ["--dev-bind", device, device]
    # The per-episode disk quota: a tmpfs of that size, gone when the sandbox ends (no cleanup to fail).
    args += ["--size", str(disk_bytes), "--perms", "0777", "--tmpfs", WORK_DIR, "--chdir", WORK_DIR,
             "--remount-ro", "/"]
    return args


def command_prefix(boundary: Boundary, interp: Interpreter, *, disk_bytes: int) -> list[str]:
    """Everything before the interpreter's own argv."""
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    common = ["--die-with-parent", "--new-session", "--hostname", HOSTNAME]
    if boundary.mode == "root":
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        caps = [arg for cap in _ROOT_CAPS for arg in ("--cap-add", cap)]
        return [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                "--cap-drop", "ALL", *caps, *common,
                *filesystem_args(interp, disk_bytes=disk_bytes, extra_files=(setpriv,)), "--",
                setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
    userns = ["--disable-userns"] if boundary.nested_userns_blocked_by == "bwrap" else []
    return [bwrap, "--unshare-all", "--unshare-user", *userns, "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--cap-drop", "ALL", *common, *filesystem_args(interp, disk_bytes=disk_bytes), "--"]


def _try(boundary: Boundary, interp: Interpreter) -> str | None:
    """Start a throwaway sandbox that reports its uid; None when it works, else why not."""
    argv = [*command_prefix(boundary, interp, disk_bytes=2**20), interp.executable, "-S", "-s", "-B", "-P", "-c",
            "import os; print(os.getuid(), os.path.exists('/proc/self'), os.getcwd())"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S,
                              env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip() or f"exit status {done.returncode}")[-600:]
    if done.stdout.split() != [str(SANDBOX_UID), "False", WORK_DIR]:
        return f"the sandbox is not what was asked for: {done.stdout.strip()!r}"
    return None


def _bwrap_version() -> str | None:
    try:
        return subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def probe(executable: str) -> Boundary:
    """Find the bwrap variant that works on this host (uncached; `check()` caches)."""
    version = _bwrap_version()
    if shutil.which("bwrap") is None or version is None:
        return Boundary(False, "none", problem=f"bubblewrap (bwrap) is not installed: {_HOW_TO['missing']}")
    try:
        interp = interpreter(executable)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return Boundary(False, "none", version, problem=f"cannot inspect the interpreter {executable}: {exc}")
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            return Boundary(False, "none", version, problem=f"running as root needs setpriv: {_HOW_TO['root']}")
        candidates = [Boundary(True, "root", version, nested_userns_blocked_by="seccomp")]
        how = _HOW_TO["root"]
    else:
        # --disable-userns writes /proc/sys/user/max_user_namespaces, which containers mount read-only;
        # there the in-child seccomp filter (which refuses unshare/clone of namespaces) is what blocks it.
        candidates = [Boundary(True, "unprivileged", version, nested_userns_blocked_by="bwrap"),
                      Boundary(True, "unprivileged", version, nested_userns_blocked_by="seccomp")]
        how = _HOW_TO["unprivileged"]
    errors = []
    for candidate in candidates:
        error = _try(candidate, interp)
        if error is None:
            return candidate
        errors.append(error)
    return Boundary(False, "none", version, problem=f"bwrap cannot set up the sandbox here ({errors[-1]}): {how}")


_checked: dict[str, Boundary] = {}
_lock = threading.Lock()


def check(executable: str) -> Boundary:
    """The boundary for sandboxes of this interpreter, probed once per process."""
    with _lock:
        if executable not in _checked:
            _checked[executable] = probe(executable)
            found = _checked[executable]
            if found.ok:
                logger.info("sandbox boundary: %s, bwrap mode %s", found.bwrap_version, found.mode)
            else:
                logger.error("sandbox boundary unavailable, model code will not run: %s", found.problem)
        return _checked[executable]


def make_service_undumpable() -> bool:
    """PR_SET_DUMPABLE=0 for the service process: no same-uid process may ptrace it or read its
    /proc/<pid>/{mem,environ} (defence in depth: sandboxes cannot see the service's pid anyway)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0   # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        return False
