"""The warm launcher: one process that has imported the training module and forks a training process per job.

A fresh `python -m services.trainer.sft.train` spends seconds importing torch and transformers before its
first step (about 10 s of wall time on a loaded 2-core box), more than a small job trains. The trainer keeps
one of these processes (`python -m services.trainer.sft.zygote`, driven by `launcher.py`) and asks it for each
single-process job; the child it forks is what a fresh process would be: its own session (the service stops
it with killpg), PR_SET_PDEATHSIG (it dies with the launcher, which dies with the service), stdout and stderr
appended to the job's log, the job's environment and working directory, then `train.main(argv)` and exit
with its status. The messages on the pipes are `shared/schemas/launcher.py`.

Fork copies one thread and no CUDA context: the launcher only imports (no torch op, nothing that starts a
thread pool) and checks before every fork (`fork_hazards`); with a hazard it refuses, and the service starts
the process fresh.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import select
import signal
import sys
import threading
import traceback
from typing import Callable, NoReturn

from pydantic import BaseModel, ValidationError

from shared.processes import die_with_parent
from shared.schemas.launcher import Exited, LaunchRequest, Launched, Ready, Refused


def fork_hazards() -> list[str]:
    """Why forking this process now would give a child that differs from a fresh process (empty: safe)."""
    hazards = []
    if threading.active_count() != 1:
        hazards.append(f"{threading.active_count()} Python threads")
    if os.path.isdir("/proc/self/task") and len(os.listdir("/proc/self/task")) != 1:
        hazards.append(f"{len(os.listdir('/proc/self/task'))} OS threads (a native thread pool)")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        hazards.append("CUDA is initialised")
    return hazards


def _send(fd: int, message: BaseModel) -> None:
    os.write(fd, (message.model_dump_json() + "\n").encode())  # < PIPE_BUF: one atomic write


def _reap(replies: int) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(replies, Exited(pid=pid, code=os.waitstatus_to_exitcode(status)))


def _exit_like_the_interpreter(code: int) -> NoReturn:
    """What interpreter exit does for a fresh process: wait for non-daemon threads, run the exit handlers the
    job registered, flush; then leave without the launcher's handlers or finalizers."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not change the exit status
            pass
    os._exit(code)


def _child(request: LaunchRequest, entry: Callable[[list[str]], int], launcher: int, private: list[int]) -> NoReturn:
    code = 1
    try:
        os.setsid()
        die_with_parent()
        if os.getppid() != launcher:  # the launcher died before PR_SET_PDEATHSIG took hold
            os._exit(1)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in private:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        log_fd = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for source, target in ((null, 0), (log_fd, 1), (log_fd, 2)):  # 0 was the request pipe
            os.dup2(source, target)
        os.close(null)
        os.close(log_fd)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.env)
        sys.argv = [getattr(sys.modules.get(entry.__module__), "__file__", sys.argv[0]), *request.argv]
        # A fresh process seeds these from the OS; forked, every child would repeat the launcher's sequence.
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        atexit._clear()  # the handlers the launcher's imports registered are the launcher's
    except BaseException:
        traceback.print_exc()
        os._exit(code)
    try:
        code = entry(request.argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    _exit_like_the_interpreter(code)


def serve(entry: Callable[[list[str]], int], replies: int) -> int:
    """Answer the launch requests on stdin until it ends (the service closed it or died)."""
    requests = 0
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd is written
    signal.set_wakeup_fd(wake_write)
    launcher = os.getpid()
    _send(replies, Ready(pid=launcher))
    pending = b""
    while True:
        readable, _, _ = select.select([requests, wake_read], [], [])
        if wake_read in readable:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
            _reap(replies)
        if requests not in readable:
            continue
        chunk = os.read(requests, 65536)
        if not chunk:
            return 0  # children die with the launcher (PR_SET_PDEATHSIG)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                request = LaunchRequest.model_validate_json(line)
            except ValidationError as exc:
                _send(replies, Refused(id="", reason=f"bad request: {exc.errors()[0]['msg']}"))
                continue
            hazards = fork_hazards()
            if hazards:
                _send(replies, Refused(id=request.id, reason="; ".join(hazards), usable=False))
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                _send(replies, Refused(id=request.id, reason=f"fork failed: {exc}"))
                continue
            if pid == 0:
                _child(request, entry, launcher, [replies, wake_read, wake_write])
            _send(replies, Launched(id=request.id, pid=pid))


def main() -> int:
    die_with_parent()
    replies = os.dup(1)  # the answers' channel; fd 1 becomes stderr so that nothing else writes into it
    os.dup2(2, 1)
    from services.trainer.sft.train import main as train_main  # the preload: torch, transformers, the loop

    try:
        return serve(train_main, replies)
    except BrokenPipeError:  # the service is gone
        return 0


if __name__ == "__main__":
    sys.exit(main())
