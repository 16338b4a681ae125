"""Interpreters started ahead of need (shared/sandbox/warm.py): real bwrap sandboxes, each handed out once."""

from __future__ import annotations

import os
import signal
import time

import pytest

import shared.sandbox.boundary as boundary_module
from shared.sandbox.limits import SandboxLimits
from shared.sandbox.process import SandboxError
from shared.sandbox.warm import WarmSandboxes
from tests.sandbox.hostile_runner import ROOMY


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(sandboxes: WarmSandboxes, n: int, timeout_s: float = 60.0) -> list[int]:
    """The pids of the `n` interpreters waiting, once they have started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sandboxes._cond:
            waiting = [process.popen.pid for process, _ in sandboxes._waiting]
        if len(waiting) >= n:
            return waiting
        time.sleep(0.05)
    raise TimeoutError(f"{n} interpreters not started within {timeout_s}s")


def host_pid(sandbox) -> int:
    return sandbox._res.process.popen.pid


@pytest.fixture
def sandboxes():
    made = WarmSandboxes(tools={"echo": lambda text="": f"echo:{text}"}, limits=ROOMY, ready=2)
    yield made
    made.close()


def test_a_sandbox_runs_on_an_interpreter_started_before_it(sandboxes):
    waiting = wait_ready(sandboxes, 2)
    with sandboxes() as sandbox:
        result = sandbox.run("x = 6 * 7\nprint(x, echo('hi'))")
        assert (result.status, result.observation) == ("ok", "42 echo:hi")
        assert host_pid(sandbox) in waiting
        assert sandbox.run("import os\nprint(os.getuid(), os.getcwd(), os.listdir('.'))").observation \
            == "65534 /work []"
        assert "own-filesystem" in sandbox.isolation and "seccomp" in sandbox.isolation
    assert sandboxes.stats["warm"] == 1


def test_no_interpreter_serves_two_episodes(sandboxes):
    """Episode after episode, each gets an interpreter no other episode had, and none of the last one's state."""
    seen = set()
    for episode in range(5):
        wait_ready(sandboxes, 1)
        with sandboxes() as sandbox:
            listing = sandbox.run("import os\nprint(sorted(os.listdir('.')), 'x' in globals())").observation
            assert listing == "[] False"
            sandbox.run(f"x = {episode}\nopen('left-by-{episode}', 'w').write('secret')")
            pid = host_pid(sandbox)
            assert pid not in seen
            seen.add(pid)
        assert not pid_alive(pid)   # closing the episode ends its interpreter; it is never handed out again
    assert sandboxes.stats["warm"] >= 1


def test_a_restart_inside_an_episode_takes_a_fresh_interpreter_and_restores_state(sandboxes):
    wait_ready(sandboxes, 2)
    with sandboxes() as sandbox:
        sandbox.run("x = 41")
        first = host_pid(sandbox)
        died = sandbox.run("import os\nos._exit(3)")
        assert died.status == "killed" and "restored" in died.observation
        assert sandbox.run("print(x + 1)").observation == "42"
        assert host_pid(sandbox) != first and not pid_alive(first)


def test_an_interpreter_that_died_while_waiting_is_never_handed_out(sandboxes):
    waiting = wait_ready(sandboxes, 2)
    for pid in waiting:
        os.killpg(pid, signal.SIGKILL)
    with sandboxes._cond:
        killed = [process for process, _ in sandboxes._waiting if process.popen.pid in waiting]
    deadline = time.monotonic() + 30
    while not all(process.pending() for process in killed):   # the pipe's EOF: the interpreter has gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with sandboxes() as sandbox:
        assert sandbox.run("print('alive')").observation == "alive"
        assert host_pid(sandbox) not in waiting
    assert sandboxes.stats["discarded"] >= 1


def test_without_interpreters_ready_a_sandbox_starts_its_own():
    sandboxes = WarmSandboxes(limits=ROOMY, ready=0)
    try:
        with sandboxes() as sandbox:
            assert sandbox.run("print(1 + 1)").observation == "2"
        assert sandboxes.stats == {"warm": 0, "cold": 1, "discarded": 0}
    finally:
        sandboxes.close()


def test_close_stops_the_waiting_interpreters():
    sandboxes = WarmSandboxes(limits=ROOMY, ready=3)
    waiting = wait_ready(sandboxes, 3)
    sandboxes.close()
    assert not any(pid_alive(pid) for pid in waiting)
    assert not any(thread.is_alive() for thread in sandboxes._threads)


def test_a_sandbox_refuses_interpreters_started_for_other_settings(sandboxes):
    from shared.sandbox.sandbox import Sandbox

    with pytest.raises(ValueError, match="other tools"):
        Sandbox(tools={"other": lambda: ""}, limits=ROOMY, warm=sandboxes)
    with pytest.raises(ValueError, match="other tools"):
        Sandbox(tools={"echo": lambda text="": text}, limits=SandboxLimits(step_timeout_s=1.0), warm=sandboxes)


def test_started_interpreters_do_not_outlive_a_missing_boundary(sandboxes, monkeypatch, tmp_path):
    """Fail closed: once the boundary check fails, no sandbox runs code, not even on an interpreter started
    while it held."""
    wait_ready(sandboxes, 2)
    monkeypatch.setenv("PATH", str(tmp_path))   # no bwrap on PATH
    monkeypatch.setattr(boundary_module, "_checked", {})
    with sandboxes() as sandbox:
        with pytest.raises(SandboxError, match="apt-get install bubblewrap"):
            sandbox.run("print('this must not run')")


def test_unconfined_interpreters_each_get_their_own_work_dir_removed_on_close():
    sandboxes = WarmSandboxes(limits=ROOMY, unconfined=True, ready=2)
    try:
        wait_ready(sandboxes, 2)
        with sandboxes() as first, sandboxes() as second:
            first.run("open('mine.txt', 'w').write('episode 1')")
            assert second.run("import os\nprint(os.listdir('.'))").observation == "[]"
            works = [first._res.work, second._res.work]
            assert works[0] != works[1] and all(os.path.isdir(w) for w in works)
        assert not any(os.path.exists(w) for w in works)
        wait_ready(sandboxes, 2)
        waiting = [work for _, work in sandboxes._waiting]
    finally:
        sandboxes.close()
    assert waiting and not any(os.path.exists(w) for w in waiting)
