"""Training jobs: durable records, the state machine, and the child processes that train.

Each job lives in `SCORE_HOME/trainer/jobs/<id>/` (layout in `spec.py`). The service is the only writer of
`job.json` and `events.jsonl`; a training process (one `python -m services.trainer.sft.train`, the same
forked by the warm launcher of `launcher.py`, or `torchrun` with N workers) writes `progress.jsonl`, its
intermediate state and finally `result.json`. The service tails the progress file into the job record, so a
restarted service finds every job where it was: jobs that were running go back to `queued` and their new
process resumes from the last intermediate state.

Nothing here touches HTTP; errors are `shared.errors` exceptions the routes turn into the envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from shared.checkpoints import check_name, resolve_model
from shared.errors import ConflictError, NotFoundError, UnprocessableError
from shared.models.loading import checkpoint_dir
from shared.fsutil import write_json_atomic
from shared.paths import PathRefused, regular_file
from shared.processes import die_with_parent
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.launcher import LaunchRequest
from shared.schemas.training import (
    VALID_TRANSITIONS,
    Conversation,
    JobEvent,
    JobInfo,
    JobMetrics,
    JobRequest,
    JobState,
)
from services.trainer.sft.data import DatasetError, read_conversations, write_conversations
from services.trainer.sft.launcher import LaunchedProcess, WarmLauncher
from services.trainer.sft.spec import DATASET, EVENTS, PROGRESS, RESULT, SPEC, TRAIN_LOG, JobSpec
from services.trainer.tracking import tensorboard_dir

log = logging.getLogger("score.trainer.jobs")
JOB_FILE = "job.json"
EXIT_GRACE_S = 10.0
REPO_ROOT = Path(__file__).resolve().parents[3]


def training_command(job_dir: Path, nproc: int) -> list[str]:
    """The command that trains one job: plain Python for one process, torchrun for several."""
    if nproc == 1:
        return [sys.executable, "-m", "services.trainer.sft.train", "--job-dir", str(job_dir)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "services.trainer.sft.train", "--job-dir", str(job_dir),
    ]


def machine_processes(device: str) -> tuple[int, str]:
    """The most training processes this machine can run for `device`: one per visible GPU on CUDA, one per
    CPU core this process may use on CPU. More only oversubscribe (or, on CUDA, cannot start)."""
    import torch  # the service imports it anyway (RL sessions); not needed to read this module

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "visible GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores"


class Job:
    """One job's record and files; every state change goes through `transition`."""

    def __init__(self, directory: Path, info: JobInfo) -> None:
        self.dir = directory
        self.info = info
        self.process: subprocess.Popen | LaunchedProcess | None = None
        self.progress_offset = 0
        self.step_times: list[float] = []
        self._seq = sum(1 for _ in self._events_path.open()) if self._events_path.exists() else 0

    @property
    def _events_path(self) -> Path:
        return self.dir / EVENTS

    def save(self) -> None:
        self.info.updated_at = time.time()
        write_json_atomic(self.dir / JOB_FILE, {
            "info": self.info.model_dump(mode="json"), "progress_offset": self.progress_offset,
        })

    def event(self, type_: str, **fields) -> JobEvent:
        event = JobEvent(seq=self._seq, time=time.time(), type=type_, **fields)
        self._seq += 1
        with self._events_path.open("a", encoding="utf-8") as handle:
            handle.write(event.model_dump_json(exclude_none=True) + "\n")
        return event

    def transition(self, target: JobState, message: str) -> None:
        if target not in VALID_TRANSITIONS[self.info.state]:
            raise ConflictError(
                f"job {self.info.id} is {self.info.state.value}; it cannot become {target.value}", param="state"
            )
        log.info("job=%s state=%s->%s %s", self.info.id, self.info.state.value, target.value, message)
        self.info.state = target
        self.save()
        self.event("state", state=target, message=message)

    def events(self, after: int = -1) -> list[JobEvent]:
        if not self._events_path.exists():
            return []
        with self._events_path.open(encoding="utf-8") as handle:
            events = [JobEvent.model_validate_json(line) for line in handle if line.strip()]
        return [e for e in events if e.seq > after]


class JobManager:
    """Creates, runs, watches, cancels and resumes jobs; at most `max_running` train at once."""

    def __init__(self, *, jobs_dir: Path, home: Path, checkpoints_dir: Path, max_running: int = 1,
                 poll_interval_s: float = 0.5, device: str | None = None, roots: list[Path] | None = None,
                 max_file_bytes: int = 64 * 2**20, warm_start: bool = True) -> None:
        self.jobs_dir = jobs_dir
        self.home = home
        # Where dataset files and checkpoint directories named in requests may be (default: SCORE_HOME only).
        self.roots = roots if roots is not None else [home]
        self.max_file_bytes = max_file_bytes
        self.checkpoints_dir = checkpoints_dir
        self.max_running = max_running
        self.poll_interval_s = poll_interval_s
        self.device = device
        self.jobs: dict[str, Job] = {}
        self.warm_start = warm_start
        self.launcher: WarmLauncher | None = None  # forks single-process jobs (see launcher.py); started on demand
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every job from disk; jobs that were running when the service stopped are queued to resume."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for directory in sorted(self.jobs_dir.iterdir()):
            if not (directory / JOB_FILE).is_file():
                continue
            raw = json.loads((directory / JOB_FILE).read_text())
            job = Job(directory, JobInfo.model_validate(raw["info"]))
            job.progress_offset = raw.get("progress_offset", 0)
            self.jobs[job.info.id] = job
            if job.info.state == JobState.running:
                self._read_progress(job)
                job.transition(JobState.queued, f"service restarted; resuming after step {job.info.step}")
        if self.warm_start:
            self.launcher = WarmLauncher(cwd=REPO_ROOT, loop=asyncio.get_running_loop(), notify=self._wake.set)
        self._loop_task = asyncio.create_task(self._run_loop(), name="trainer-jobs")

    async def close(self) -> None:
        """Stop watching; running training processes are stopped and stay `running` on disk, so the next
        start resumes them from their last intermediate state."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for job in self.jobs.values():
            if job.process is not None and job.process.poll() is None:
                self._stop_process(job)
        if self.launcher is not None:
            self.launcher.close()

    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in JobState}
        for job in self.jobs.values():
            counts[job.info.state.value] += 1
        return counts

    # --- requests -------------------------------------------------------------------------------------

    def create(self, request: JobRequest) -> tuple[JobInfo, bool]:
        """(job, created). An existing `job_id` returns that job unchanged (idempotent retry)."""
        if request.job_id is not None and request.job_id in self.jobs:
            return self.jobs[request.job_id].info, False
        job_id = request.job_id or f"{request.kind}-{uuid.uuid4().hex[:12]}"
        output_name = request.output_name or f"{request.kind}-{job_id}"[:64]
        check_name(output_name)
        hp = request.hyperparameters
        if self.device is not None and hp.device == "auto":
            hp = hp.model_copy(update={"device": self.device})
        limit, unit = machine_processes(hp.device)
        if hp.nproc > limit:
            raise UnprocessableError(f"nproc {hp.nproc} exceeds this machine's {limit} {unit}; use at most {limit}",
                                     param="body.hyperparameters.nproc")
        try:
            base_path, base_label = resolve_model(request.base, home=self.home, roots=self.roots)
            checkpoint_dir(base_path)  # a broken checkpoint or adapter base is a 422 now, not a failed job later
        except KeyError as exc:
            raise UnprocessableError(f"unknown base checkpoint: {exc.args[0]}", param="body.base") from None
        except (ValueError, FileNotFoundError) as exc:
            raise UnprocessableError(str(exc), param="body.base") from None
        conversations = self._conversations(request)
        directory = self.jobs_dir / job_id
        directory.mkdir(parents=True, exist_ok=True)  # a create that crashed before job.json
        write_conversations(directory / DATASET, conversations)
        spec = JobSpec(job_id=job_id, base_path=str(base_path), base_label=base_label, output_name=output_name,
                       checkpoints_dir=str(self.checkpoints_dir), hyperparameters=hp,
                       tensorboard_dir=str(tensorboard_dir(self.home, output_name, "sft")),
                       dataset_name=Path(request.dataset.path).name if request.dataset.path else None)
        write_json_atomic(directory / SPEC, spec.model_dump(mode="json"))
        now = time.time()
        info = JobInfo(id=job_id, kind=request.kind, state=JobState.queued, base=base_label, output_name=output_name,
                       hyperparameters=hp, created_at=now, updated_at=now)
        job = Job(directory, info)
        job.save()
        job.event("state", state=JobState.queued, message=f"{len(conversations)} conversations from {base_label}")
        self.jobs[job_id] = job
        self._wake.set()
        return info, True

    def _conversations(self, request: JobRequest) -> list[Conversation]:
        if request.dataset.rows is not None:
            return request.dataset.rows
        try:
            path = regular_file(request.dataset.path, self.roots, max_bytes=self.max_file_bytes, what="dataset file")
        except PathRefused as exc:
            raise UnprocessableError(str(exc), param="body.dataset.path") from None
        try:
            return read_conversations(path)
        except DatasetError as exc:
            raise UnprocessableError(f"dataset {exc}", param="body.dataset.path") from None

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}", param="job_id")
        return job

    def list(self) -> list[JobInfo]:
        return sorted((job.info for job in self.jobs.values()), key=lambda info: info.created_at)

    def cancel(self, job_id: str) -> JobInfo:
        job = self.get(job_id)
        job.transition(JobState.cancelled, "cancelled by request")  # 409 when already finished
        if job.process is not None:
            self._stop_process(job)
            job.process = None
        self._wake.set()
        return job.info

    # --- the scheduler --------------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        while True:
            for job in list(self.jobs.values()):
                if job.process is not None:
                    self._watch(job)
            running = sum(1 for job in self.jobs.values() if job.process is not None)
            for job in self.list():
                if running >= self.max_running:
                    break
                current = self.jobs[job.id]
                if current.info.state == JobState.queued:
                    if not self._launch(current):
                        break  # the warm launcher is importing; this job goes first once it is ready
                    running += 1
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    def _launch(self, job: Job) -> bool:
        """Start the job's training process; False (nothing started) while the warm launcher is importing."""
        nproc = job.info.hyperparameters.nproc
        env = {**os.environ, "SCORE_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        if nproc > 1:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        warm = self.launcher is not None and nproc == 1 and self.launcher.ready_for(env)
        if warm is None:
            return False
        job.info.attempts += 1
        process = None
        if warm:
            process = self.launcher.launch(LaunchRequest(
                id=job.info.id, argv=["--job-dir", str(job.dir)], env=env, cwd=str(REPO_ROOT),
                log_path=str(job.dir / TRAIN_LOG),
            ))
        if process is None:
            with (job.dir / TRAIN_LOG).open("ab") as log_file:
                # Started from the event loop's thread: PR_SET_PDEATHSIG fires when the *thread* that forked exits.
                process = subprocess.Popen(
                    training_command(job.dir, nproc), cwd=str(REPO_ROOT), env=env, stdout=log_file,
                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
                )
        job.process = process
        job.step_times.clear()
        how = ", forked by the warm launcher" if isinstance(process, LaunchedProcess) else ""
        job.transition(JobState.running, f"training process started (pid {process.pid}, nproc {nproc}, "
                                         f"attempt {job.info.attempts}{how})")
        return True

    def _watch(self, job: Job) -> None:
        self._read_progress(job)
        code = job.process.poll()
        if code is None:
            return
        job.process = None
        self._read_progress(job)
        if job.info.state != JobState.running:
            return
        if code == 0 and (job.dir / RESULT).is_file():
            result = json.loads((job.dir / RESULT).read_text())
            checkpoint = Checkpoint.model_validate(result["checkpoint"])
            job.info.checkpoint = checkpoint
            job.info.eta_s = 0.0
            job.transition(JobState.succeeded, f"published {checkpoint.name} v{checkpoint.version}")
        else:
            job.info.error = f"training process exited with {code}: {self._log_tail(job)}"
            job.transition(JobState.failed, job.info.error)

    def _read_progress(self, job: Job) -> None:
        path = job.dir / PROGRESS
        if not path.exists():
            return
        with path.open("rb") as handle:
            handle.seek(job.progress_offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        if not complete:
            return
        job.progress_offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            self._apply(job, json.loads(line))
        job.save()

    def _apply(self, job: Job, record: dict) -> None:
        info = job.info
        kind = record["type"]
        if kind == "started":
            info.total_steps = record["total_steps"]
            info.step = record["step"]
            info.resumed_from_step = record.get("resumed_from_step")
            info.metrics = info.metrics.model_copy(update={
                "padding_share": record.get("padding_share"), "assistant_share": record.get("assistant_share"),
            })
            resumed = f", resumed from step {info.resumed_from_step}" if info.resumed_from_step else ""
            job.event("log", step=info.step, message=f"{record['examples']} examples, {info.total_steps} steps, "
                      f"layout {record.get('layout')}, padding share {record.get('padding_share')}{resumed}")
        elif kind == "progress":
            info.step = record["step"]
            info.metrics = JobMetrics(**{**info.metrics.model_dump(), **record["metrics"]})
            job.step_times = (job.step_times + [record["step_time_s"]])[-20:]
            per_step = sum(job.step_times) / len(job.step_times)
            info.eta_s = round(per_step * max(0, (info.total_steps or info.step) - info.step), 1)
            job.event("progress", step=info.step, total_steps=info.total_steps, eta_s=info.eta_s,
                      metrics=record["metrics"])
        elif kind == "checkpoint":
            job.event("checkpoint", step=record["step"], message=f"intermediate state saved at step {record['step']}")
        elif kind == "published":
            info.checkpoint = Checkpoint.model_validate(record["checkpoint"])
            job.event("checkpoint", step=record["step"], message=f"published {info.checkpoint.name} "
                      f"v{info.checkpoint.version}", metrics=record.get("metrics"))

    def _stop_process(self, job: Job) -> None:
        """SIGTERM the job's process group (torchrun and its workers), SIGKILL if it lingers."""
        process = job.process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    @staticmethod
    def _log_tail(job: Job, lines: int = 5) -> str:
        path = job.dir / TRAIN_LOG
        if not path.exists():
            return "(no log)"
        tail = [line for line in path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
        return " | ".join(tail)
