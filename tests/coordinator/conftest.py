"""Fixtures the coordinator's report and export tests share: real gold episodes and every kind of run record."""

from __future__ import annotations

import pytest

from shared.schemas.agent import Step
from shared.schemas.trajectories import Repair, TrajectoryRecord
from shared.tasks.builtin import builtin_tasks
from shared.tasks.gold import builtin_tools, gold_episode

RUN_ID = "run-test"


def _repair(step: int | None, hard: bool = False, tokens: int = 10) -> Repair:
    return Repair(first_error_step=step, hard=hard, reason="no fix" if hard else None, teacher_tokens=tokens,
                  teacher_calls=1)


def _wrong(step: Step) -> Step:
    return step.model_copy(update={"code": "final_answer_print(0)", "observation": "0"})


@pytest.fixture(scope="module")
def gold():
    tools = builtin_tools()
    tasks = builtin_tasks(family="arith", n=5, seed=3) + builtin_tasks(family="kb", n=2, seed=3)
    return [(task, gold_episode(task, tools)) for task in tasks]


def make_records(gold) -> list[TrajectoryRecord]:
    """Every kind of record a run produces: teacher trajectories, each MPS outcome, and RL-pool corrections."""
    def record(i, stage, pool, outcome, correct, repairs=(), first=None, **extra):
        task, episode = gold[i]
        steps = episode.steps
        chosen = rejected = None
        if first is not None:
            chosen, rejected = steps[first], _wrong(steps[first])
        return TrajectoryRecord(
            run_id=RUN_ID, stage=stage, pool=pool, task=task, outcome=outcome, steps=steps,
            final_answer=episode.final_answer if correct else "0", correct=correct, repairs=list(repairs),
            first_error_step=first, chosen_step=chosen, rejected_step=rejected,
            teacher_tokens=extra.get("teacher_tokens", sum(r.teacher_tokens for r in repairs)),
            student_tokens=extra.get("student_tokens", 0), policy_version=extra.get("policy_version"),
        )

    return [
        record(0, "bc_init", "bc_init", "teacher_solved", True, teacher_tokens=100),
        record(1, "bc_init", "bc_init", "teacher_solved", True, teacher_tokens=120),
        record(2, "bc_init", "bc_init", "teacher_failed", False, teacher_tokens=90),
        record(3, "baseline", "train", "teacher_solved", True, teacher_tokens=80),
        record(5, "baseline", "train", "teacher_failed", False, teacher_tokens=70),
        record(0, "mps", "train", "self_solved", True, student_tokens=40, policy_version=1),
        record(1, "mps", "train", "repaired", True, [_repair(2)], first=2, student_tokens=50),
        record(2, "mps", "train", "repaired", True, [_repair(1), _repair(2)], first=1, student_tokens=60),
        record(3, "mps", "train", "hard", False, [_repair(None, hard=True)], student_tokens=30),
        record(4, "mps", "train", "unsolved", False, [_repair(1), _repair(1), _repair(3)], first=1, student_tokens=70),
        record(5, "mps", "rl", "unsolved", False, [_repair(2)], first=2, student_tokens=20),
        record(6, "mps", "rl", "unsolved", False, [_repair(1)], first=1, student_tokens=20),
        record(6, "mps", "rl", "hard", False, [_repair(None, hard=True)], student_tokens=20),
    ]


@pytest.fixture(scope="module")
def records(gold):
    return make_records(gold)
