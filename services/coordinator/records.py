"""Trajectory records: built from episodes, read back from the stage results, turned into training rows."""

from __future__ import annotations

import hashlib

from shared.agent.format import episode_messages
from shared.schemas.agent import Task
from shared.schemas.runs import TrajectoryRecord


def teacher_record(run_id: str, stage: str, pool: str, task: Task, episode, correct: bool) -> TrajectoryRecord:
    cost = getattr(episode, "cost", None)
    return TrajectoryRecord(
        run_id=run_id, stage=stage, pool=pool, task=task, outcome="teacher_solved" if correct else "teacher_failed",
        steps=episode.steps, final_answer=episode.final_answer, correct=correct,
        teacher_tokens=cost.teacher_tokens if cost is not None else 0,
    )


def records_of(results: dict[str, dict]) -> list[TrajectoryRecord]:
    """Every trajectory record in a stage's results (items hold one record or a list), in key order."""
    records = []
    for _key, result in sorted(results.items()):
        for raw in result.get("records", [result["record"]] if "record" in result else []):
            records.append(TrajectoryRecord.model_validate(raw))
    return records


def rows_for_sft(records: list[TrajectoryRecord]) -> list[dict]:
    """Messages rows of the correct trajectories (loss falls on every assistant turn)."""
    return [{"messages": episode_messages(r.task, r.steps), "task_id": r.task.id, "outcome": r.outcome}
            for r in records if r.correct]


def keep_share(task_id: str, share: float, salt: str) -> bool:
    """A deterministic `share` of tasks (by hash), so a redelivered item or a restart keeps the same ones."""
    digest = int(hashlib.sha1(f"{salt}/{task_id}".encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < share
