"""Trajectory records: built from episodes, read back from the stage results, turned into training rows."""

from __future__ import annotations

import hashlib

from shared.agent.format import episode_messages
from shared.schemas.agent import Step, Task
from shared.schemas.teacher import Cost
from shared.schemas.trajectories import TeacherSpend, TrajectoryRecord


# The purpose a teacher-solved trajectory's tokens count under, by stage.
TRAJECTORY_PURPOSE = {"bc_init": "cold_start_trajectories", "baseline": "baseline_trajectories",
                      "baseline_tokens": "reserve_trajectories", "eval_teacher": "eval_trajectories"}


def spend(calls: int, prompt: int, written: int) -> TeacherSpend:
    return TeacherSpend(calls=calls, prompt_tokens=prompt, written_tokens=written)


def trajectory_spend(stage: str, cost: Cost | None) -> dict[str, TeacherSpend]:
    """A teacher-solved episode's cost under its stage's purpose."""
    if cost is None:
        return {}
    return {TRAJECTORY_PURPOSE[stage]: spend(cost.teacher_calls, cost.teacher_prompt_tokens, cost.teacher_tokens)}


def correction_spend(cost: Cost, *, purpose_of_judgements: str = "judgements") -> dict[str, TeacherSpend]:
    """A correction's (or judgement's) cost split by purpose: full rollouts, judgements, and the rest (proposed and
    corrected steps). Calls of rollouts and judgements are not itemised by the teacher: they count under
    `corrections`."""
    parts = {
        "verify_rollouts": spend(0, cost.rollout_prompt_tokens, cost.rollout_tokens),
        purpose_of_judgements: spend(0, cost.judge_prompt_tokens, cost.judge_tokens),
        "corrections": spend(cost.teacher_calls, cost.teacher_prompt_tokens - cost.rollout_prompt_tokens
                             - cost.judge_prompt_tokens, cost.teacher_tokens - cost.rollout_tokens - cost.judge_tokens),
    }
    return {k: v for k, v in parts.items() if v.calls or v.prompt_tokens or v.written_tokens}


def add_spend(*spends: dict[str, TeacherSpend]) -> dict[str, TeacherSpend]:
    total: dict[str, TeacherSpend] = {}
    for each in spends:
        for purpose, amount in each.items():
            total[purpose] = total.get(purpose, TeacherSpend()).add(TeacherSpend.model_validate(amount))
    return total


def teacher_record(run_id: str, stage: str, pool: str, task: Task, episode, correct: bool) -> TrajectoryRecord:
    cost = getattr(episode, "cost", None)
    return TrajectoryRecord(
        run_id=run_id, stage=stage, pool=pool, task=task, outcome="teacher_solved" if correct else "teacher_failed",
        steps=episode.steps, final_answer=episode.final_answer, correct=correct,
        teacher_tokens=cost.teacher_tokens if cost is not None else 0,
        teacher_prompt_tokens=cost.teacher_prompt_tokens if cost is not None else 0,
        teacher_spend=trajectory_spend(stage, cost),
    )


def records_of(results: dict[str, dict]) -> list[TrajectoryRecord]:
    """Every trajectory record in a stage's results (items hold one record or a list), in key order."""
    records = []
    for _key, result in sorted(results.items()):
        for raw in result.get("records", [result["record"]] if "record" in result else []):
            records.append(TrajectoryRecord.model_validate(raw))
    return records


def trained_on(record: TrajectoryRecord, step: Step) -> bool:
    """Whether a step of a correct trajectory is an SFT target (weight 1) or context only (weight 0).

    - A malformed turn (parse error, empty or missing code) is never a target: the episode went on past it,
      but what was written is not what the model should learn to write.
    - A plan the student wrote during mentored problem solving is never a target: a plan is checked only when
      no act step can be fixed (`verify` then tries the teacher's own plan; when `judge` names the plan, the
      repair replaces the first act step after it), so a wrong plan can survive in a repaired trajectory. A plan
      the teacher wrote is a target: in cold start and the baseline, and in a trajectory whose plan the teacher
      corrected (a repair at step 0, which puts the teacher's plan first).
    """
    if step.parse_error is not None:
        return False
    if step.kind == "plan" and record.stage == "mps":
        return plan_corrected(record)
    return True


def plan_corrected(record: TrajectoryRecord) -> bool:
    """Whether the teacher replaced the trajectory's plan (a repair at step 0): its first step is the teacher's."""
    return any(not repair.hard and repair.first_error_step == 0 for repair in record.repairs)


def gives_rl_prefix(record: TrajectoryRecord) -> bool:
    """Whether RL starts from this record: an RL-pool task whose first correction is an act step. A corrected plan
    leaves no verified prefix to start from (RL from the task alone is the student's ordinary rollout)."""
    return (record.pool == "rl" and record.chosen_step is not None and record.first_error_step is not None
            and record.chosen_step.kind == "act")


def training_messages(record: TrajectoryRecord) -> list[dict]:
    """The record as chat messages; assistant turns carry `weight` 0 or 1 (see `trained_on`)."""
    messages = episode_messages(record.task, record.steps)
    weights = iter([int(trained_on(record, step)) for step in record.steps])
    return [{**m, "weight": next(weights)} if m["role"] == "assistant" else m for m in messages]


def sft_row(record: TrajectoryRecord) -> dict | None:
    """The messages row SFT trains on, for a correct trajectory with at least one turn to learn from; else None."""
    if not record.correct:
        return None
    messages = training_messages(record)
    if not any(m.get("weight") for m in messages if m["role"] == "assistant"):
        return None
    return {"messages": messages, "task_id": record.task.id, "outcome": record.outcome}


def rows_for_sft(records: list[TrajectoryRecord]) -> list[dict]:
    """The rows of a training stage's dataset file, in the records' order."""
    return [row for row in map(sft_row, records) if row is not None]


def keep_share(task_id: str, share: float, salt: str) -> bool:
    """A deterministic `share` of tasks (by hash), so a redelivered item or a restart keeps the same ones."""
    digest = int(hashlib.sha1(f"{salt}/{task_id}".encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < share
