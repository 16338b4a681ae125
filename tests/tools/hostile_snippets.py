"""Hostile code snippets the sandbox must contain, shared by the library and HTTP-level tests.

Each case is model-written code that tries to escape, starve or crash the sandbox,
with `expect`: case-insensitive phrases of which at least one must appear in the
observation.  Several phrases are allowed where different hosts stop the snippet
at different layers (e.g. "blocked" by the audit hook, "no such file" when the
minimal root hides the path).

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

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_SOURCE = PROJECT_ROOT / "shared" / "tools" / "sandbox.py"
SETTINGS_SOURCE = PROJECT_ROOT / "shared" / "settings.py"
SECRET_ENV = "SCORE_API_TOKEN"
# Unique per test process: concurrent test runs must not see (or delete) each other's files.
# The snippets are generated here, so whoever runs them uses the same paths.
_UNIQUE = os.getpid()
CANARY_PATH = f"/tmp/score-sandbox-canary-{_UNIQUE}.txt"
ESCAPE_PATHS = (
    f"/tmp/score-sandbox-escape-{_UNIQUE}.txt",
    str(PROJECT_ROOT / f"score-sandbox-escape-{_UNIQUE}.txt"),
    f"/score-sandbox-escape-{_UNIQUE}.txt",
)

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
    """, ("memoryerror",)),
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
]
