"""Helpers for trainer tests: gold-trajectory datasets and job directories the training process accepts."""

from __future__ import annotations

import json
import shutil
import time
from functools import lru_cache
from pathlib import Path

import httpx

from shared.agent.format import episode_messages
from shared.schemas.training import SFTHyperparameters
from shared.tasks.builtin import builtin_tasks
from services.trainer.sft.spec import DATASET, PROGRESS, SPEC, JobSpec


@lru_cache(maxsize=4)
def gold_conversations(n: int, *, family: str = "arith", seed: int = 0) -> tuple[str, ...]:
    """`n` built-in training tasks solved by the expert, executed in the sandbox, as messages JSON lines."""
    from shared.tasks.gold import gold_episodes

    tasks = builtin_tasks(family=family, split="train", n=n, seed=seed)
    return tuple(
        json.dumps({"messages": episode_messages(task, episode.steps)})
        for task, episode in zip(tasks, gold_episodes(tasks))
    )


POOL = 256  # one pool of gold conversations per test session; smaller sets are its prefixes


def gold_lines(n: int) -> tuple[str, ...]:
    """The first `n` gold arith conversations (generated once per session, shared by the tests)."""
    return gold_conversations(max(n, POOL))[:n]


def write_dataset(path: Path, lines) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_job_dir(directory: Path, *, base_path: Path, home: Path, lines, **hyperparameters) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_dataset(directory / DATASET, lines)
    spec = JobSpec(
        job_id=directory.name, base_path=str(base_path), base_label="builtin:student", output_name=directory.name,
        checkpoints_dir=str(home / "checkpoints"), hyperparameters=SFTHyperparameters(**hyperparameters),
    )
    (directory / SPEC).write_text(spec.model_dump_json())
    return directory


def copy_job_inputs(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in (DATASET, SPEC):
        shutil.copy(source / name, target / name)
    return target


def progress(directory: Path, kind: str = "progress") -> list[dict]:
    lines = (directory / PROGRESS).read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == kind]


def tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar, read with TensorBoard's event reader, as `tensorboard --logdir` would."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def wait_for(url: str, predicate, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    job = {}
    while time.monotonic() < deadline:
        job = httpx.get(url, timeout=10).json()
        if predicate(job):
            return job
        if job.get("state") == "failed":
            raise AssertionError(f"job failed: {job.get('error')}")
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}; last: {job}")
