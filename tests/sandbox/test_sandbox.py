"""Library-level tests of the sandboxed interpreter (the shared/sandbox/ package).

Short timeouts keep the file fast; every hostile case gets a fresh sandbox so one case
cannot influence the next.  The suite runs in whatever configuration pytest runs in
(root on a dev box, an unprivileged CI user); when run as root, one slow test also runs
the whole suite as an unprivileged uid with no capabilities.
"""

from __future__ import annotations

import gc
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import shared.sandbox.boundary as boundary_module
import shared.sandbox.process as process_module
from shared.sandbox.limits import SandboxLimits
from shared.sandbox.process import BOUNDARY_LAYERS, LAYERS, SandboxError
from shared.sandbox.report import sandbox_report
from shared.sandbox.sandbox import MAX_CODE_CHARS, Sandbox
from tests.sandbox.hostile_runner import FAST, ROOMY, run_benign, run_hostile
from tests.sandbox.hostile_snippets import (
    BENIGN_CASES,
    CANARY_PATH,
    ESCAPE_PATHS,
    HOSTILE_CASES,
    PROJECT_ROOT,
    SCORE_HOMES,
    SECRET_ENV,
)

PARENT_LAYERS = ("isolated-python", "scrubbed-env")
UNPRIVILEGED_UID = 10001


# --------------------------------------------------------------------------- helpers

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sandbox_pid(sandbox: Sandbox) -> int:
    """The host pid of the sandbox's process (bwrap, or the interpreter when unconfined)."""
    assert sandbox.run("print('started')").observation == "started"
    return sandbox._res.process.popen.pid


@pytest.fixture
def outside_world(monkeypatch):
    """A secret in the parent's environment, a canary file to protect, no escape files."""
    secret = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv(SECRET_ENV, secret)
    Path(CANARY_PATH).write_text("canary")
    for path in ESCAPE_PATHS:
        Path(path).unlink(missing_ok=True)
    yield secret
    Path(CANARY_PATH).unlink(missing_ok=True)
    for path in ESCAPE_PATHS:
        Path(path).unlink(missing_ok=True)


def assert_nothing_escaped(secret: str, observation: str) -> None:
    assert secret not in observation
    assert os.environ[SECRET_ENV] == secret, "the test process environment changed"
    assert Path(CANARY_PATH).read_text() == "canary", "a file outside the sandbox was changed"
    for path in ESCAPE_PATHS:
        assert not os.path.exists(path), f"the code created {path}"
    assert pid_alive(os.getppid()) and pid_alive(1)


# --------------------------------------------------------------------------- hostile code

@pytest.mark.parametrize("case", HOSTILE_CASES, ids=[case.name for case in HOSTILE_CASES])
def test_hostile_case_is_contained(case, outside_world):
    observation, problems = run_hostile(case, secret=outside_world)
    assert not problems, f"{problems}: {observation}"
    assert_nothing_escaped(outside_world, observation)


@pytest.mark.parametrize("case", BENIGN_CASES, ids=[case.name for case in BENIGN_CASES])
def test_ordinary_file_operations_work(case):
    observation, problems = run_benign(case)
    assert not problems, observation


@pytest.mark.parametrize("case", BENIGN_CASES, ids=[case.name for case in BENIGN_CASES])
def test_ordinary_file_operations_give_the_same_observation_unconfined(case):
    """The development opt-out runs the same agent code to the same observation (relative paths, dir_fd)."""
    observation, problems = run_benign(case, unconfined=True)
    assert not problems, observation


def test_hostile_suite_is_large_enough():
    names = [case.name for case in HOSTILE_CASES]
    assert len(names) >= 70 and len(set(names)) == len(names)
    assert all(case.expect and all(p == p.lower() for p in case.expect) for case in HOSTILE_CASES)


def test_boundary_holds_without_the_audit_hook(outside_world, monkeypatch):
    """As if model code had got past the hook: bwrap (and seccomp) still refuse everything that matters."""
    monkeypatch.setattr(process_module, "_DISABLED_LAYERS", frozenset({"audit-hooks"}))
    code = textwrap.dedent(f"""
        import os, socket
        results = {{}}
        def attempt(name, action):
            try:
                action()
                results[name] = "ALLOWED"
            except OSError as exc:
                results[name] = type(exc).__name__
        attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        attempt("unix_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        attempt("fork", lambda: os.fork() == 0 and os._exit(0))
        attempt("exec", lambda: os.execv("/bin/true", ["true"]))
        attempt("signal_init", lambda: os.kill(1, 0))
        attempt("renice_init", lambda: os.setpriority(os.PRIO_PROCESS, 1, 19))
        attempt("repin_init", lambda: os.sched_setaffinity(1, {{0}}))
        attempt("proc", lambda: os.listdir("/proc"))
        attempt("read_passwd", lambda: open("/etc/passwd").read())
        attempt("read_project", lambda: open({str(PROJECT_ROOT / "pyproject.toml")!r}).read())
        attempt("list_tmp", lambda: os.listdir("/tmp"))
        attempt("write_tmp", lambda: open({ESCAPE_PATHS[0]!r}, "w").write("x"))
        attempt("write_root", lambda: open({ESCAPE_PATHS[2]!r}, "w").write("x"))
        attempt("write_stdlib", lambda: open(os.__file__, "a"))
        attempt("dev_shm", lambda: open("/dev/shm/x", "w").write("x"))
        for i, home in enumerate({SCORE_HOMES!r}):
            attempt(f"score_home{{i}}", lambda: os.listdir(home))
        print(os.getuid(), sorted(results.items()))
    """)
    with Sandbox(limits=ROOMY) as sandbox:
        assert "audit-hooks" not in sandbox.isolation
        result = sandbox.run(code)
    assert result.status == "ok", result.observation
    assert result.observation.startswith("65534 "), result.observation
    assert "ALLOWED" not in result.observation, result.observation
    assert_nothing_escaped(outside_world, result.observation)


def test_episodes_do_not_see_each_other_and_keep_nothing():
    with Sandbox(limits=ROOMY) as first, Sandbox(limits=ROOMY) as second:
        first.run("open('mine.txt', 'w').write('secret of episode 1')")
        assert second.run("import os\nprint(os.listdir('.'))").observation == "[]"
    with Sandbox(limits=ROOMY) as third:
        assert third.run("import os\nprint(os.listdir('.'))").observation == "[]"


def test_the_step_id_is_out_of_reach_of_model_code():
    """Frames, closures and helpers are searched for anything that looks like the step id."""
    with Sandbox(limits=ROOMY) as sandbox:
        sandbox.run("x = 1")
        step_id_length = 16
        result = sandbox.run(textwrap.dedent(f"""
            import sys
            planted = "p" * {step_id_length}   # the search must find this one (and only this one)
            seen = []
            frame = sys._getframe()
            while frame is not None:
                values = list(frame.f_locals.values())
                seen += [v for v in values if isinstance(v, str) and len(v) == {step_id_length}]
                for v in values:
                    cells = getattr(v, "__closure__", None)
                    for cell in cells if isinstance(cells, tuple) else ():
                        seen += [x for x in vars(cell.cell_contents).values()
                                 if isinstance(x, str) and len(x) == {step_id_length}] \
                            if hasattr(cell.cell_contents, "__dict__") else []
                frame = frame.f_back
            print(seen)
        """))
    assert (result.observation, result.status) == (str(["p" * step_id_length]), "ok")


# --------------------------------------------------------------------------- behaviour

def test_variables_persist_across_runs():
    with Sandbox(limits=ROOMY) as sandbox:
        first = sandbox.run("x = 20\ndef double(v):\n    return 2 * v")
        assert (first.observation, first.status) == ("Execution finished with no output.", "ok")
        second = sandbox.run("print(double(x) + 2)")
        assert (second.observation, second.status, second.final_answer) == ("42", "ok", None)
        assert 0 < second.duration_s < ROOMY.step_timeout_s  # measured around the run, not a placeholder


def test_final_answer_print_records_the_answer_of_that_run_only():
    with Sandbox(limits=ROOMY) as sandbox:
        result = sandbox.run("answer = 6 * 7\nfinal_answer_print(answer)")
        assert (result.observation, result.final_answer) == ("42", "42")
        assert sandbox.run("final_answer_print([1, 'a'])").final_answer == "[1, 'a']"
        assert sandbox.run("print('later')").final_answer is None


def test_tool_round_trip_and_failures():
    calls = []

    def search(query, k=3):
        calls.append((query, k))
        return f"results for {query} (k={k})"

    def web_search(query):
        raise ValueError("index offline")

    with Sandbox(tools={"search": search, "web_search": web_search}, limits=ROOMY) as sandbox:
        assert sandbox.run('print(search("abc"))').observation == "results for abc (k=3)"
        assert sandbox.run('r = search("x", k=5)\nprint(type(r).__name__, r)').observation == "str results for x (k=5)"
        assert calls == [("abc", 3), ("x", 5)]
        failed = sandbox.run('web_search("q")')
        assert failed.status == "error"
        assert failed.observation == "Error: ToolError: web_search: ValueError: index offline (line 1)"
        bad_args = sandbox.run("search(object())")
        assert bad_args.status == "error" and "JSON-serialisable" in bad_args.observation
        assert len(calls) == 2
        # The tool's implementation stays in the parent: only a proxy exists in the child.
        assert sandbox.run("print(search.__code__.co_filename)").observation != __file__


def test_error_observation_has_output_type_message_and_line_only():
    with Sandbox(limits=ROOMY) as sandbox:
        result = sandbox.run("print('before')\nx = 1\nraise ValueError('bad value')")
        assert (result.observation, result.status) == ("before\nError: ValueError: bad value (line 3)", "error")
        nested = sandbox.run("def f():\n    return 1 / 0\n\nf()")
        assert nested.observation == "Error: ZeroDivisionError: division by zero (line 2)"
        syntax = sandbox.run("x = 1\ny = (")
        assert syntax.observation.startswith("Error: SyntaxError: ") and syntax.observation.endswith("(line 2)")
        assert sandbox.run("print(x)").observation == "1"   # the failed step kept earlier state


def test_stdout_stderr_and_buffer_are_captured_in_order():
    with Sandbox(limits=ROOMY) as sandbox:
        code = ("import sys\nprint('a')\nsys.stderr.write('b\\n')\n"
                "sys.stdout.buffer.write(b'c\\n')\nprint('d', file=sys.stderr)")
        assert sandbox.run(code).observation == "a\nb\nc\nd"


def test_output_is_truncated_with_a_marker():
    limits = SandboxLimits(step_timeout_s=5.0, max_output_chars=100)
    with Sandbox(limits=limits) as sandbox:
        result = sandbox.run("print('y' * 10000)")
        assert result.observation == "y" * 100 + "\n...[output truncated: 9901 more characters]"
        # 100 MB printed: the child keeps only the first 100 characters.
        big = sandbox.run("print('z' * 10 ** 8)\nraise KeyError('k')")
        assert big.observation == ("z" * 100 + f"\n...[output truncated: {10 ** 8 + 1 - 100} more characters]"
                                   "\nError: KeyError: 'k' (line 2)")


def test_timeout_restarts_and_restores_earlier_variables():
    with Sandbox(limits=SandboxLimits(step_timeout_s=1.0)) as sandbox:
        sandbox.run("x = 41")
        sandbox.run("y = x + 1\nprint(y)")
        sandbox.run("undefined_name")            # an error step is replayed too
        pid_before = sandbox_pid(sandbox)
        result = sandbox.run("import time\ntime.sleep(30)")
        assert result.status == "timeout"
        assert result.observation == ("Error: execution timed out after 1s. The interpreter was restarted "
                                      "and the state from earlier steps was restored.")
        # cut at the limit, not after the step's 30 s sleep (how soon after is measured in bench/, not here)
        assert 1.0 <= result.duration_s < 30.0
        assert not pid_alive(pid_before)
        assert sandbox.run("print(x, y)").observation == "41 42"


def test_failed_restore_is_reported():
    calls = []

    def visits(_query=""):
        calls.append(1)
        return str(len(calls))

    with Sandbox(tools={"visits": visits}, limits=SandboxLimits(step_timeout_s=0.5)) as sandbox:
        # Fine the first time; loops forever when replayed (the parent-side tool answers differently).
        sandbox.run("if visits() != '1':\n    while True:\n        pass\nz = 1")
        result = sandbox.run("while True:\n    pass")
        assert result.status == "timeout"
        assert "restoring the state from earlier steps failed at step 1 of 1 (timeout)" in result.observation
        assert sandbox.run("print('z' in globals())").observation == "False"


def test_dead_interpreter_is_restarted_with_state():
    with Sandbox(limits=ROOMY) as sandbox:
        sandbox.run("x = 5")
        exited = sandbox.run("import os\nos._exit(3)")
        assert exited.status == "killed"
        assert exited.observation.startswith("Error: the interpreter exited with status 3.")
        assert "state from earlier steps was restored" in exited.observation
        assert sandbox.run("print(x)").observation == "5"
        kept = sandbox.run("raise SystemExit(2)")
        assert (kept.status, kept.observation) == ("error", "Error: SystemExit: 2 (line 1)")
        assert sandbox.run("print(x)").observation == "5"


def test_environment_is_scrubbed_and_hashing_deterministic(outside_world):
    code = "import os\nprint(sorted(os.environ))\nprint({'alpha', 'beta', 'gamma', 'delta'}, hash('abc'))"
    observations = []
    for _ in range(2):
        with Sandbox(limits=ROOMY) as sandbox:
            observations.append(sandbox.run(code).observation)
    assert observations[0] == observations[1]
    env_line = observations[0].splitlines()[0]
    assert env_line == "['HOME', 'LANG', 'PATH', 'PWD', 'PYTHONHASHSEED', 'PYTHONUTF8', 'TMPDIR', 'TZ']"
    assert outside_world not in observations[0]


def test_observations_are_deterministic():
    steps = [
        "print(sorted({3, 1, 2}), {'b': 1, 'a': 2})",
        "open('/etc/hostname')",
        "print('q' * 5000)",
        "import socket",
        "1 / 0",
    ]
    runs = []
    for _ in range(2):
        with Sandbox(limits=ROOMY) as sandbox:
            runs.append([sandbox.run(step).observation for step in steps])
    assert runs[0] == runs[1]


def test_ordinary_stdlib_code_works():
    code = textwrap.dedent("""
        import collections, dataclasses, datetime, decimal, fractions, itertools, json, math, pathlib
        import random, re, shutil, sqlite3, statistics, tempfile, zlib, zoneinfo, os, sys
        @dataclasses.dataclass
        class Point:
            x: int
            y: int
        pathlib.Path("notes.txt").write_text("hello")
        os.makedirs("sub/dir")
        open("sub/dir/f.txt", "w").write("x")
        shutil.rmtree("sub")
        fd, name = tempfile.mkstemp()
        os.close(fd)
        db = sqlite3.connect(":memory:")
        db.execute("create table t (v)")
        sys.setrecursionlimit(5000)
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)
        listing_ok = sorted(os.listdir(".")) == sorted(["notes.txt", os.path.basename(name)])
        print(Point(1, 2), open("notes.txt").read(), listing_ok)
        print(json.dumps({"a": [1, 2]}), math.comb(5, 2), statistics.mean([1, 2, 3]), fractions.Fraction(1, 3))
        print(decimal.Decimal("1.1") + decimal.Decimal("2.2"), len(zlib.compress(b"x" * 100)) < 100, depth(4000))
        print(datetime.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")).utcoffset())
        print(random.Random(0).randint(1, 100), collections.Counter("aab").most_common(1), re.findall(r"\\d", "a1b2"))
    """)
    with Sandbox(limits=SandboxLimits(step_timeout_s=10.0)) as sandbox:
        result = sandbox.run(code)
    assert result.status == "ok", result.observation
    assert result.observation.splitlines() == [
        "Point(x=1, y=2) hello True",
        '{"a": [1, 2]} 10 2 1/3',
        "3.3 True 4000",
        "1:00:00",
        "50 [('a', 2)] ['1', '2']",
    ]


def test_close_kills_the_process():
    sandbox = Sandbox(limits=ROOMY)
    pid = sandbox_pid(sandbox)
    assert pid_alive(pid)
    sandbox.close()
    assert not pid_alive(pid)
    sandbox.close()   # idempotent
    with pytest.raises(RuntimeError):
        sandbox.run("print(1)")


def test_unconfined_work_dir_is_removed_even_when_deep_and_locked():
    """The development opt-out keeps its work dir on the host: cleanup must not raise nor leave it."""
    sandbox = Sandbox(limits=ROOMY, unconfined=True)
    assert sandbox.run("open('f', 'w').write('x')").status == "ok"
    work = sandbox._res.work
    fd = os.open(work, os.O_RDONLY)   # what the deep_tree hostile case builds, made here (faster than the hook)
    for _ in range(1400):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    os.chmod(os.path.join(work, "d"), 0)
    sandbox.close()
    assert not os.path.exists(work)


def test_dropped_sandbox_is_cleaned_up_by_its_finaliser():
    sandbox = Sandbox(limits=ROOMY)
    pid = sandbox_pid(sandbox)
    del sandbox
    gc.collect()
    assert not pid_alive(pid)


def test_context_manager_closes_and_close_waits_for_a_running_step():
    with Sandbox(limits=ROOMY) as sandbox:
        pid = sandbox_pid(sandbox)
        results = []
        slow_step = "import time\ntime.sleep(0.4)\nprint('done')"
        worker = threading.Thread(target=lambda: results.append(sandbox.run(slow_step)))
        worker.start()
        time.sleep(0.1)
    worker.join()
    assert results[0].observation == "done"
    assert not pid_alive(pid)


def test_isolation_lists_the_active_layers():
    with Sandbox(limits=ROOMY) as sandbox:
        layers = sandbox.isolation
        uid = sandbox.run("import os\nprint(os.getuid())").observation
        hidden = sandbox.run(f"import os\nprint(os.path.exists('/etc/passwd'), os.path.exists({str(PROJECT_ROOT)!r}), "
                             "os.path.exists('/proc'))").observation
    assert layers == LAYERS   # every layer, in canonical order: the boundary is not optional
    report = sandbox_report()
    assert report["ok"] and report["boundary"] == "bwrap" and report["problem"] is None
    assert report["layers"] == {layer: True for layer in LAYERS}
    assert report["mode"] == ("root" if os.geteuid() == 0 else "unprivileged")
    # Reported layers are real (os.path.exists is not audited: the OS answers).
    assert uid == "65534"
    assert hidden == "False False False"


def test_disabled_layers_are_not_reported(monkeypatch):
    monkeypatch.setattr(process_module, "_DISABLED_LAYERS", frozenset({"seccomp", "audit-hooks", "no-child-processes"}))
    with Sandbox(limits=ROOMY) as sandbox:
        assert sandbox.isolation == BOUNDARY_LAYERS + PARENT_LAYERS + ("rlimits",)
        assert sandbox.run("print(1 + 1)").observation == "2"


def test_without_bwrap_code_execution_is_refused_with_a_reason(monkeypatch, tmp_path):
    """Fail closed: no boundary, no code execution, and the message says what to install or allow."""
    monkeypatch.setenv("PATH", str(tmp_path))   # no bwrap on PATH
    monkeypatch.setattr(boundary_module, "_checked", {})
    report = sandbox_report()
    assert report["ok"] is False and report["boundary"] == "none"
    assert "bubblewrap" in report["problem"] and "SCORE_SANDBOX_UNCONFINED" in report["problem"]
    assert not any(report["layers"].values())
    with Sandbox(limits=ROOMY) as sandbox:
        with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
            sandbox.run("print('this must not run')")
    # The explicit development opt-out still runs code (in-process layers only).
    with Sandbox(limits=ROOMY, unconfined=True) as sandbox:
        assert sandbox.run("print(6 * 7)").observation == "42"
        assert not set(BOUNDARY_LAYERS) & set(sandbox.isolation)


def test_a_boundary_that_cannot_start_is_refused(monkeypatch):
    """bwrap present but refused by the host (here: an option it rejects): the probe reports the reason."""
    real = boundary_module.command_prefix
    monkeypatch.setattr(boundary_module, "command_prefix",
                        lambda *args, **kwargs: [*real(*args, **kwargs)[:1], "--no-such-option", "--"])
    monkeypatch.setattr(boundary_module, "_checked", {})
    report = sandbox_report()
    assert report["ok"] is False and "--no-such-option" in report["problem"]


def test_eight_sandboxes_in_parallel_threads():
    def episode(i: int) -> str:
        with Sandbox(limits=FAST) as sandbox:
            sandbox.run(f"n = {i}")
            if i == 0:   # one episode times out while the others keep going
                assert sandbox.run("while True:\n    pass").status == "timeout"
            return sandbox.run("print(n * n)").observation

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(episode, range(8))) == [str(i * i) for i in range(8)]


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        Sandbox(tools={"final_answer_print": lambda: ""})
    with pytest.raises(ValueError):
        Sandbox(tools={"not a name": lambda: ""})
    with Sandbox(limits=ROOMY) as sandbox:
        with pytest.raises(TypeError):
            sandbox.run(b"print(1)")   # type: ignore[arg-type]
        too_long = sandbox.run("#" * (MAX_CODE_CHARS + 1))
        assert too_long.status == "error" and "longer than" in too_long.observation


def unprivileged_python() -> list[str] | None:
    """A command line that runs the project's Python as uid 10001 with no capabilities, or None."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    system_python = "/usr/bin/python3.11"
    if not os.path.exists(system_python):
        return None
    return ["setpriv", f"--reuid={UNPRIVILEGED_UID}", f"--regid={UNPRIVILEGED_UID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", system_python]


@pytest.mark.slow
def test_hostile_suite_as_an_unprivileged_user():
    """The configuration compose uses (uid 10001, no capabilities), emulated here when the suite runs as root;
    as a non-root user the whole file above already is that configuration."""
    command = unprivileged_python()
    if command is None:
        pytest.skip("needs root with setpriv and /usr/bin/python3.11 (as non-root, the tests above are this case)")
    site = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    for path in (PROJECT_ROOT, Path(site)):
        readable = subprocess.run([*command[:-1], "test", "-r", str(path / "pyproject.toml")
                                   if path == PROJECT_ROOT else str(path)], capture_output=True)
        if readable.returncode != 0:
            pytest.skip(f"{path} is not readable by uid {UNPRIVILEGED_UID}")
    done = subprocess.run([*command, "-m", "tests.sandbox.hostile_runner"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=900, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{PROJECT_ROOT}:{site}",
                                                       "HOME": "/nonexistent", "SCORE_HOME": "/nonexistent"})
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[0]["sandbox"]["mode"] == "unprivileged", done.stdout[-2000:] + done.stderr[-2000:]
    failed = [line for line in lines if line.get("contained") is False]
    assert not failed and done.returncode == 0, failed or done.stderr[-2000:]
    assert lines[-1]["cases"] == len(HOSTILE_CASES) + len(BENIGN_CASES)
