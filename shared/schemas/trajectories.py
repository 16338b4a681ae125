"""What a run produced per task (`GET /v1/runs/{id}/trajectories`): trajectories, teacher repairs and spend."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shared.schemas.agent import Step, Task

TeacherPurpose = Literal["cold_start_trajectories", "corrections", "verify_rollouts", "judgements", "rl_judgements",
                         "baseline_trajectories", "reserve_trajectories", "eval_trajectories", "rl_scoring",
                         "opd_scoring", "score_opd_judgements", "score_opd_scoring"]
TEACHER_PURPOSES: tuple[str, ...] = ("cold_start_trajectories", "corrections", "verify_rollouts", "judgements",
                                     "rl_judgements", "baseline_trajectories", "reserve_trajectories",
                                     "eval_trajectories", "rl_scoring", "opd_scoring",
                                     "score_opd_judgements", "score_opd_scoring")


class TeacherSpend(BaseModel):
    """Teacher tokens spent for one purpose (the scripted expert: what a model teacher would have spent)."""

    calls: int = Field(default=0, description="Teacher calls (generations).", examples=[3])
    prompt_tokens: int = Field(default=0, description="Prompt tokens the teacher read.", examples=[2100])
    written_tokens: int = Field(default=0, description="Tokens the teacher wrote.", examples=[180])

    def add(self, other: "TeacherSpend") -> "TeacherSpend":
        return TeacherSpend(calls=self.calls + other.calls, prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                            written_tokens=self.written_tokens + other.written_tokens)


class Repair(BaseModel):
    """One teacher intervention in a mentored episode."""

    first_error_step: int | None = Field(
        description="0-based index of the student's first critical error (null if hard).", examples=[2],
    )
    hard: bool = Field(description="The teacher found no usable repair.", examples=[False])
    reason: str | None = Field(
        default=None, description="Why, when hard.",
        examples=["no teacher step from this prefix reached the gold answer"],
    )
    teacher_tokens: int = Field(default=0, description="Tokens the teacher generated for it.", examples=[184])
    teacher_prompt_tokens: int = Field(default=0, description="Prompt tokens the teacher read for it.", examples=[1800])
    teacher_calls: int = Field(default=0, description="Teacher model calls.", examples=[2])


Outcome = Literal["self_solved", "repaired", "hard", "unsolved", "teacher_solved", "teacher_failed"]


class TrajectoryRecord(BaseModel):
    """A finished trajectory of a run (one per task and stage, whatever redeliveries happened)."""

    run_id: str = Field(description="The run.", examples=["run-20250611-142233-3f2a9c"])
    stage: str = Field(
        description="`bc_init` (teacher), `mps` (student + teacher repairs) or `baseline` (teacher).", examples=["mps"],
    )
    pool: Literal["bc_init", "train", "rl", "reserve"] = Field(
        description="The task pool it came from (`reserve`: the equal-teacher-token baseline's).", examples=["train"],
    )
    task: Task = Field(description="The task.")
    outcome: Outcome = Field(description="How the task ended.", examples=["repaired"])
    steps: list[Step] = Field(description="The final trajectory (the last attempt's steps, prefixes included).")
    final_answer: str | None = Field(default=None, description="Its final answer.", examples=["989"])
    correct: bool = Field(description="Whether the final answer matches the gold answer.", examples=[True])
    repairs: list[Repair] = Field(default_factory=list, description="Teacher interventions, in order.")
    first_error_step: int | None = Field(
        default=None, description="Where the first repair cut the student's own trajectory (RL prefix length).",
        examples=[2],
    )
    rejected_step: Step | None = Field(default=None, description="The student's step at the first critical error.")
    chosen_step: Step | None = Field(default=None, description="The teacher's corrected step there.")
    teacher_tokens: int = Field(default=0, description="Teacher tokens written for this task.", examples=[184])
    teacher_prompt_tokens: int = Field(default=0, description="Teacher prompt tokens read for this task.",
                                       examples=[1800])
    teacher_spend: dict[TeacherPurpose, TeacherSpend] = Field(
        default_factory=dict, description="The task's teacher spend by purpose (prompt and written tokens).",
        examples=[{"corrections": {"calls": 3, "prompt_tokens": 2100, "written_tokens": 180}}],
    )
    policy_version: int | None = Field(default=None, description="Student policy version that acted.", examples=[3])
    student_tokens: int = Field(default=0, description="Tokens the student generated.", examples=[312])


class TrajectoryList(BaseModel):
    trajectories: list[TrajectoryRecord] = Field(description="Trajectories, ordered by stage then task.")
    total: int = Field(description="How many match the filters (before offset/limit).", examples=[42])
