"""Hostile code snippets the sandbox must contain, shared by the library and HTTP-level tests.

Each case is model-written code that tries to escape, starve or crash the sandbox,
with `expect`: case-insensitive phrases of which at least one must appear in the
observation.  Several phrases are allowed where different layers stop the snippet
(e.g. "blocked" by the audit hook, "no such file" where the boundary hides the
path).  No observation may contain `ESCAPED_MARK`: snippets that try several
things print it for each one that worked.  `BENIGN_CASES` is ordinary agent code
that must give exactly the same observation in every configuration.

Stdlib only and free of side effects at import: a test that uses the cases is
responsible for the environment they assume:
  - `CANARY_PATH` exists before a run (the `delete_outside` case tries to remove it);
  - none of `ESCAPE_PATHS` exists after a run (cases try to create them);
  - `SECRET_ENV` is set to a secret in the service's environment and must never
    appear in an observation.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

ESCAPED_MARK = "escaped:"

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_SOURCE = PROJECT_ROOT / "shared" / "sandbox" / "sandbox.py"
SETTINGS_SOURCE = PROJECT_ROOT / "shared" / "settings.py"
SECRET_ENV = "SCORE_API_TOKEN"
# Unique per test process: concurrent test runs must not see (or delete) each other's files.
# The snippets are generated here, so whoever runs them uses the same paths (a test that has another
# process send them, e.g. scripts/hostile_probe.py, passes its own pid in SCORE_HOSTILE_ID).
_UNIQUE = int(os.environ.get("SCORE_HOSTILE_ID") or os.getpid())
CANARY_PATH = f"/tmp/score-sandbox-canary-{_UNIQUE}.txt"
ESCAPE_PATHS = (
    f"/tmp/score-sandbox-escape-{_UNIQUE}.txt",
    str(PROJECT_ROOT / f"score-sandbox-escape-{_UNIQUE}.txt"),
    f"/score-sandbox-escape-{_UNIQUE}.txt",
)
# Where a service keeps models and checkpoints (SCORE_HOME): the test's, the image's, the default.
SCORE_HOMES = tuple(dict.fromkeys([os.environ.get("SCORE_HOME") or str(Path.home() / ".score"), "/data",
                                   str(Path.home() / ".score")]))

BLOCKED = ("blocked",)
TIMED_OUT = ("timed out",)
# Reading a host path: the audit hook says "blocked"; the minimal root hides it ("no such file");
# file permissions for nobody say "permission denied".
HIDDEN = ("blocked", "no such file", "permission denied")
# Writing a host path: as above, or the read-only root says so.
UNWRITABLE = ("blocked", "no such file", "permission denied", "read-only")


@dataclass(frozen=True)
class HostileCase:
    name: str
    code: str
    expect: tuple[str, ...]


def _case(name: str, code: str, expect: tuple[str, ...]) -> HostileCase:
    return HostileCase(name, textwrap.dedent(code).strip() + "\n", expect)


# Prepended to snippets that try many things: `attempt(name, fn)` prints ESCAPED_MARK when fn succeeds.
_ATTEMPT = f"""
def attempt(name, fn):
    try:
        value = fn()
    except BaseException as exc:
        print("refused", name, type(exc).__name__)
        return False
    print({ESCAPED_MARK!r}, name, repr(value)[:80])
    return True
"""
# Everything the service keeps from model code, tried by `_ESCAPES` after whatever bypass came before it.
_ESCAPES = f"""
import os
attempt("parent_environ", lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read())
attempt("parent_mem", lambda: open(f"/proc/{{os.getppid()}}/mem", "rb").read(16))
attempt("pid1_environ", lambda: open("/proc/1/environ", "rb").read())
for home in {SCORE_HOMES!r}:
    attempt("list_score_home", lambda: os.listdir(home))
    attempt("write_score_home", lambda: open(home + "/poisoned-{_UNIQUE}", "w").write("x"))
attempt("list_tmp", lambda: [n for n in os.listdir("/tmp") if n.startswith("score-sandbox")])
attempt("write_tmp", lambda: open({ESCAPE_PATHS[0]!r}, "w").write("x"))
attempt("write_dev_shm", lambda: open("/dev/shm/score-escape-{_UNIQUE}", "w").write("x"))
attempt("read_project", lambda: open({str(SANDBOX_SOURCE)!r}).read(10))
attempt("read_shadow", lambda: open("/etc/shadow").read(10))
print("contained")
"""


def _attempts(code: str) -> str:
    return _ATTEMPT + textwrap.dedent(code)


HOSTILE_CASES: list[HostileCase] = [
    # --- time and CPU
    _case("infinite_loop", "while True:\n    pass", TIMED_OUT),
    _case("signal_ignore_loop", """
        try:
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
        except Exception as exc:
            print("no handler:", exc)
        while True:
            pass
    """, TIMED_OUT),
    _case("sleep_past_timeout", "import time\ntime.sleep(3600)", TIMED_OUT),
    # With default limits the wall-clock timeout fires first; with a 1 s RLIMIT_CPU the kernel does.
    _case("cpu_rlimit", "x = 0\nwhile True:\n    x += 1", ("timed out", "cpu time limit")),
    _case("big_int_str", "print(str(10 ** 100000))", ("exceeds the limit",)),
    _case("big_int_str_unlimited", """
        import sys
        sys.set_int_max_str_digits(0)
        print(len(str(10 ** 10 ** 7)))
    """, TIMED_OUT),
    # --- processes
    _case("fork_bomb", "import os\nwhile True:\n    os.fork()", BLOCKED),
    _case("multiprocessing_fork", """
        import multiprocessing
        p = multiprocessing.Process(target=print, args=("child",))
        p.start()
        p.join()
    """, BLOCKED),
    _case("subprocess_run", "import subprocess\nprint(subprocess.run(['id'], capture_output=True).stdout)", BLOCKED),
    _case("os_system", f"import os\nos.system('touch {ESCAPE_PATHS[0]}')", BLOCKED),
    _case("os_popen", "import os\nprint(os.popen('id').read())", BLOCKED),
    _case("os_execv", f"import os\nos.execv('/bin/sh', ['sh', '-c', 'touch {ESCAPE_PATHS[0]}'])", BLOCKED),
    _case("os_posix_spawn", "import os\nos.posix_spawn('/bin/true', ['true'], {})", BLOCKED),
    _case("ctypes_system", f"import ctypes\nctypes.CDLL(None).system(b'touch {ESCAPE_PATHS[0]}')", BLOCKED),
    _case("subinterpreter", "import _xxsubinterpreters as interpreters\ninterpreters.create()", BLOCKED),
    # --- signals to other processes
    _case("kill_parent", """
        try:
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except Exception as exc:
            print("no handler:", exc)
        import os
        os.kill(os.getppid(), 9)
    """, BLOCKED),
    _case("kill_init", "__import__('os').kill(1, 9)", BLOCKED),
    _case("killpg_parent_group", "import os\nos.killpg(os.getpgid(os.getppid()), 9)", ("blocked", "no such process")),
    # --- memory, recursion, output
    _case("memory_bytearray", "data = bytearray(10 ** 10)", ("memoryerror",)),
    _case("memory_list_growth", """
        def grow():
            chunks = []
            while True:
                chunks.append(bytearray(10 ** 7))
        grow()
    """, ("memoryerror", "timed out")),   # a loaded box may not fill 512 MiB within the step timeout
    _case("recursion_bomb", "def f(n):\n    return f(n + 1)\nf(0)", ("recursionerror",)),
    _case("recursion_limit_raise", "import sys\nsys.setrecursionlimit(10 ** 6)", BLOCKED),
    _case("nested_repr_crash", """
        import sys
        sys.setrecursionlimit(20000)
        x = []
        for _ in range(100000):
            x = [x]
        print(len(repr(x)))
    """, ("recursionerror", "segmentation fault", "killed")),
    _case("huge_print", "print('x' * 10 ** 9)", ("memoryerror", "output truncated")),
    _case("print_flood", "while True:\n    print('spam ' * 100)", TIMED_OUT),
    _case("too_many_files", """
        def hog():
            return [open(f"file{i}.txt", "w") for i in range(1000)]
        hog()
    """, ("too many open files",)),
    # --- secrets and host files
    _case("env_secret_lookup", f"import os\nprint(os.environ.get({SECRET_ENV!r}), sorted(os.environ))", ("none",)),
    _case("proc_self_environ", "print(open('/proc/self/environ', 'rb').read())", HIDDEN),
    _case("proc_parent_environ", "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())", HIDDEN),
    _case("read_etc_passwd", "print(open('/etc/passwd').read())", HIDDEN),
    _case("read_etc_shadow", "print(open('/etc/shadow').read())", HIDDEN),
    _case("list_root", "import os\nprint(os.listdir('/'))", HIDDEN),
    _case("read_project_source", f"print(open({str(SANDBOX_SOURCE)!r}).read())", HIDDEN),
    _case("import_service_modules", "import shared.settings\nprint(shared.settings.get_settings())",
          ("no module named", "blocked")),
    _case("import_services_via_sys_path", f"""
        import sys
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        import services
        print(services.__file__)
    """, ("no module named", "blocked")),
    _case("import_settings_by_file", f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("settings", {str(SETTINGS_SOURCE)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(module.get_settings())
    """, HIDDEN),
    # A path-like object that answers differently on each call.  open() resolves it once,
    # before the audit event; os.open() resolves it for the call, and the hook would see a
    # second answer, so the hook refuses path-like objects it cannot trust.
    _case("pathlike_toctou_open", """
        class Sneaky:
            calls = 0
            def __fspath__(self):
                Sneaky.calls += 1
                return "notes.txt" if Sneaky.calls == 1 else "/etc/passwd"
        print(open(Sneaky()).read())
    """, ("blocked", "no such file")),
    _case("pathlike_toctou_os_open", """
        import os
        class Sneaky:
            calls = 0
            def __fspath__(self):
                Sneaky.calls += 1
                return "/etc/passwd" if Sneaky.calls == 1 else "notes.txt"
        open("notes.txt", "w").close()
        print(os.read(os.open(Sneaky(), os.O_RDONLY), 100))
    """, HIDDEN),
    # --- writes outside the work dir
    _case("write_tmp", f"open({ESCAPE_PATHS[0]!r}, 'w').write('escaped')", UNWRITABLE),
    _case("write_project_dir", f"open({ESCAPE_PATHS[1]!r}, 'w').write('escaped')", UNWRITABLE),
    # Opening for append is enough to prove the point and, should a regression allow it,
    # changes nothing: the interpreter's own files must never be damaged by a failing test.
    _case("write_stdlib", "import os\nf = open(os.__file__, 'a')\nprint('opened for writing:', f.writable())",
          UNWRITABLE),
    _case("delete_outside", f"import os\nos.remove({CANARY_PATH!r})", UNWRITABLE),
    _case("symlink_escape", """
        import os
        os.symlink('/etc/passwd', 'passwd_link')
        print(open('passwd_link').read())
    """, UNWRITABLE),
    _case("hardlink_escape", "import os\nos.link('/etc/passwd', 'passwd_copy')\nprint(open('passwd_copy').read())",
          UNWRITABLE),
    _case("chdir_root_then_write",
          f"import os\nos.chdir('/')\nopen({os.path.basename(ESCAPE_PATHS[2])!r}, 'w').write('x')", UNWRITABLE),
    _case("dirfd_relative_escape", """
        import os
        work = os.open(".", os.O_RDONLY)
        depth = os.getcwd().count("/")
        deep = "/".join(["d"] * depth)
        os.makedirs(deep)
        os.chdir(deep)
        fd = os.open("../" * depth + "etc/passwd", os.O_RDONLY, dir_fd=work)
        print(os.read(fd, 100))
    """, HIDDEN),
    # --- network
    _case("tcp_connect_redis", """
        import socket
        s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
        print("connected", s)
    """, BLOCKED),
    _case("udp_send", """
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", 53))
    """, BLOCKED),
    _case("getaddrinfo", "import socket\nprint(socket.getaddrinfo('localhost', 80))", BLOCKED),
    _case("raw_socket_module", "import _socket\nprint(_socket.socket())", BLOCKED),
    _case("urllib_local", """
        import urllib.request
        print(urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=1).read())
    """, BLOCKED),
    # --- the interpreter itself and its control pipe
    _case("system_exit", "raise SystemExit(3)", ("systemexit",)),
    _case("os_exit", "import os\nos._exit(3)", ("exited with status 3",)),
    _case("gc_walk", "import gc\nprint(len(gc.get_objects()))", BLOCKED),
    _case("code_object_forgery", "f = lambda: 0\nf.__code__ = f.__code__.replace(co_code=b'\\x00' * 8)\nf()",
          BLOCKED),
    _case("control_pipe_garbage", """
        import os
        for fd in range(3, 256):
            try:
                os.write(fd, b"\\xff" * 64)
            except OSError:
                pass
        print("garbage written")
    """, ("protocol",)),
    _case("control_pipe_forged_result", """
        import json, os, struct
        frame = json.dumps({"op": "done", "id": "forged", "status": "ok", "output": "all good",
                            "total": 8, "error": None, "final_answer": "42"}).encode()
        for fd in range(3, 256):
            try:
                os.write(fd, struct.pack("!I", len(frame)) + frame)
            except OSError:
                pass
        while True:
            pass
    """, ("protocol",)),
    _case("control_pipe_close", """
        import os
        for fd in range(3, 256):
            try:
                os.close(fd)
            except OSError:
                pass
        print("pipes closed")
    """, ("control pipe", "protocol")),
    # --- the audit hook bypassed: the boundary must hold on its own
    # Reach the hook's frames through a refused call's traceback and rewrite every policy value found
    # there (closure cells, defaults), then try everything the service keeps from model code.
    _case("hook_rewrite_then_escape", _attempts("""
        rewritten = 0
        try:
            open("/etc/passwd")
        except PermissionError as exc:
            tb = exc.__traceback__
            while tb is not None:
                for value in list(tb.tb_frame.f_locals.values()):
                    cells = getattr(value, "__closure__", None)
                    for cell in cells if isinstance(cells, tuple) else ():
                        try:
                            cell.cell_contents = "/" if isinstance(cell.cell_contents, str) else ("/",)
                            rewritten += 1
                        except Exception:
                            pass
                    if isinstance(getattr(value, "__defaults__", None), tuple):
                        try:
                            value.__defaults__ = tuple(("/",) if isinstance(d, tuple) else d
                                                       for d in value.__defaults__)
                            rewritten += 1
                        except Exception:
                            pass
                tb = tb.tb_next
        print("rewritten", rewritten)
    """) + _ESCAPES, ("contained",)),
    _case("escapes_without_bypass", _attempts("") + _ESCAPES, ("contained",)),
    # --- the uid model code runs as
    _case("runs_as_nobody", "import os\nprint('uid', os.getuid(), os.geteuid(), os.getgid())",
          ("uid 65534 65534 65534",)),
    # --- the service's scheduling
    _case("renice_and_repin_service", _attempts("""
        import os
        for pid in {os.getppid(), 1}:
            attempt(f"renice {pid}", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
            attempt(f"repin {pid}", lambda: os.sched_setaffinity(pid, {0}))
        attempt("renice_user", lambda: os.setpriority(os.PRIO_USER, os.getuid(), 19))
        attempt("renice_group", lambda: os.setpriority(os.PRIO_PGRP, 0, 19))
        print("contained")
    """), ("contained",)),
    # --- SQLite writes files wherever its path says
    _case("sqlite_attach_outside", _attempts(f"""
        import sqlite3
        db = sqlite3.connect(":memory:")
        attempt("attach", lambda: db.execute("ATTACH DATABASE '{ESCAPE_PATHS[0]}' AS x").fetchall())
        attempt("vacuum_into", lambda: db.execute("VACUUM INTO '{ESCAPE_PATHS[1]}'").fetchall())
        attempt("uri", lambda: sqlite3.connect("file:{ESCAPE_PATHS[0]}?mode=rwc", uri=True).execute("CREATE TABLE t(v)"))
        attempt("attach_score_home", lambda: db.execute("ATTACH DATABASE '{SCORE_HOMES[0]}/x.db' AS y").fetchall())
        print("contained")
    """), ("contained",)),
    # --- forged bytecode
    _case("marshal_forged_code", """
        import marshal
        exec(marshal.loads(marshal.dumps(compile("print('escaped: marshal')", "m", "exec"))))
    """, BLOCKED),
    _case("marshal_crash_bytes", "import marshal\nmarshal.loads(b'\\xe3' + b'\\x00' * 64)", BLOCKED),
    _case("pyc_import_forged", """
        import importlib.util, marshal, sys
        code = compile("print('escaped: pyc')", "forged", "exec")
        open("forged_mod.pyc", "wb").write(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))
        sys.path.insert(0, ".")
        import forged_mod
    """, BLOCKED),
    _case("pyc_spoofed_stdlib_path", """
        import importlib._bootstrap_external as ext, marshal, os
        code = compile("print('escaped: spoofed pyc')", "forged", "exec")
        exec(ext._compile_bytecode(marshal.dumps(code), name="os", bytecode_path=ext.cache_from_source(os.__file__)))
    """, BLOCKED),
    # --- the step id: find it wherever Python can reach, forge the step's result with each candidate
    _case("forge_step_result", """
        import json, os, struct, sys
        candidates = set()
        def collect(value):
            if isinstance(value, str) and len(value) == 16:
                candidates.add(value)
            elif isinstance(value, dict):
                for item in list(value.values()):
                    if isinstance(item, str) and len(item) == 16:
                        candidates.add(item)
        frame = sys._getframe()
        while frame is not None:
            for value in list(frame.f_locals.values()):
                collect(value)
                cells = getattr(value, "__closure__", None)
                for cell in cells if isinstance(cells, tuple) else ():
                    contents = cell.cell_contents
                    collect(contents)
                    collect(getattr(contents, "__dict__", None))
            frame = frame.f_back
        for candidate in candidates:
            frame = json.dumps({"op": "done", "id": candidate, "status": "ok", "output": "escaped: forged",
                                "total": 15, "error": None, "final_answer": "forged"}).encode()
            for fd in range(3, 64):
                try:
                    os.write(fd, struct.pack("!I", len(frame)) + frame)
                except OSError:
                    pass
        print("no candidate" if not candidates else "forged", len(candidates))
    """, ("no candidate", "protocol")),
    # --- the work dir: quota, cleanup
    _case("disk_quota", """
        import os
        written = 0
        try:
            for i in range(200):
                with open(f"fill{i}", "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, 15 * 2 ** 20)
                written += 15
            print("escaped: wrote", written, "MiB")
        except OSError as exc:
            print("stopped after", written, "MiB:", exc)
    """, ("no space left",)),
    # 1,400 nested directories (made through dir fds, as os.makedirs would recurse too deep), the top one
    # chmod 000: cleanup must neither raise nor leave them behind.
    _case("deep_tree", """
        import os
        fd = os.open(".", os.O_RDONLY)
        for _ in range(1400):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(fd)
        os.chmod("d", 0)
        print("depth 1400")
    """, ("depth 1400",)),
    _case("dev_shm_and_tmp", _attempts(f"""
        attempt("dev_shm", lambda: open("/dev/shm/score-escape-{_UNIQUE}", "w").write("x"))
        attempt("tmp", lambda: open("/tmp/score-escape-{_UNIQUE}", "w").write("x"))
        attempt("list_tmp", lambda: __import__("os").listdir("/tmp"))
        print("contained")
    """), ("contained",)),
]


@dataclass(frozen=True)
class BenignCase:
    name: str
    code: str
    observation: str   # exact, the same in every configuration


BENIGN_CASES: list[BenignCase] = [
    BenignCase("relative_path_file_ops", textwrap.dedent("""
        import os, pathlib, shutil
        os.mkdir("a")
        os.rename("a", "b")
        pathlib.Path("c/d").mkdir(parents=True)
        os.replace("b", "c/b")
        shutil.move("c", "e")
        os.makedirs("f/g", exist_ok=True)
        os.rmdir("f/g")
        pathlib.Path("e/note.txt").write_text("hi")
        shutil.copy("e/note.txt", "copy.txt")
        os.remove("copy.txt")
        print(sorted(os.listdir(".")), sorted(os.listdir("e")), open("e/note.txt").read())
    """).strip(), "['e', 'f'] ['b', 'd', 'note.txt'] hi"),
    BenignCase("tempfile_and_sqlite_file", textwrap.dedent("""
        import sqlite3, tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("data")
        db = sqlite3.connect("local.db")
        db.execute("CREATE TABLE t(v)")
        db.execute("INSERT INTO t VALUES (42)")
        db.commit()
        print(open(f.name).read(), db.execute("SELECT v FROM t").fetchone()[0])
    """).strip(), "data 42"),
    BenignCase("namedtuple_defaults_and_dataclass", textwrap.dedent("""
        import collections, dataclasses, typing
        P = collections.namedtuple("P", "x y", defaults=(0,))
        class Q(typing.NamedTuple):
            a: int
            b: int = 2
        @dataclasses.dataclass
        class R:
            c: int = 3
        print(P(1), Q(1), R())
    """).strip(), "P(x=1, y=0) Q(a=1, b=2) R(c=3)"),
]
