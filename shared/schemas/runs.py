"""A coordinator run's state (`/v1/runs`): its state machine, stage progress, events, dead letters, and the
checkpoints it points at.

A run moves tasks through the SCoRe stages (`bc_init -> mps -> sft -> rl`, with `eval` after each, and the
plain-distillation `baseline`). Its config is in `shared.schemas.run_config`, its trajectories in
`shared.schemas.trajectories`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.schemas.checkpoints import Checkpoint
from shared.schemas.run_config import RunConfig


class RunState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return not RUN_TRANSITIONS[self]


# Legal run-state transitions; anything else is a 409.
RUN_TRANSITIONS: dict[RunState, set[RunState]] = {
    RunState.queued: {RunState.running, RunState.cancelled, RunState.failed},
    RunState.running: {RunState.succeeded, RunState.failed, RunState.cancelled},
    RunState.succeeded: set(),
    RunState.failed: set(),
    RunState.cancelled: set(),
}

# The stage graph, in order. `eval_*` stages measure the policy the previous stage produced.
STAGES = ("bc_init", "eval_bc_init", "mps", "sft", "eval_sft", "rl", "eval_rl", "baseline", "eval_baseline",
          "baseline_tokens", "eval_baseline_tokens", "control", "eval_control", "opd", "eval_opd", "score_opd", "eval_score_opd", "eval_teacher",
          "report")


class StageProgress(BaseModel):
    state: Literal["pending", "running", "done", "skipped"] = Field(
        description="Where the stage is.", examples=["running"],
    )
    total: int = Field(default=0, description="Work items planned.", examples=[64])
    done: int = Field(
        default=0, description="Work items finished (each counted once, whatever redeliveries).", examples=[40],
    )
    failed: int = Field(default=0, description="Work items that ended in the dead-letter stream.", examples=[1])
    started_at: float | None = Field(default=None, description="Unix time the stage started.", examples=[1749651760.2])
    finished_at: float | None = Field(
        default=None, description="Unix time the stage finished.", examples=[1749652101.7],
    )
    items_per_s: float | None = Field(default=None, description="Items finished per second so far.", examples=[0.42])
    eta_s: float | None = Field(
        default=None, description="Seconds to finish the stage's items at the current rate.", examples=[55.0],
    )
    detail: str | None = Field(
        default=None, description="What the stage is doing now (e.g. the trainer job's progress).",
        examples=["trainer job sft-arith-01: step 120/200"],
    )


class ServedCheckpoint(BaseModel):
    """A checkpoint as the student serves it for a run."""

    checkpoint: Checkpoint = Field(description="The published checkpoint.")
    policy_version: int = Field(
        ge=1, description="The policy version it is served as: a run's versions grow across checkpoint series (RL "
        "step 1 follows SFT), so this is not the checkpoint's own version.", examples=[3],
    )
    label: str = Field(description="The policy it is: a training stage or an RL step.", examples=["sft"])


class RunPointers(BaseModel):
    """The checkpoints a run points at, each field one field of the run's Redis hash. Stages read and set them
    through the run store (`pointers`, `set_pointers`); a field never set is null."""

    student_checkpoint: ServedCheckpoint | None = Field(
        default=None, description="What the student should be serving now (reloaded if the student restarted).",
    )
    score_checkpoint: ServedCheckpoint | None = Field(
        default=None, description="The SCoRe policy the run ends on (reference arms are only evaluated).",
    )
    bc_init_checkpoint: Checkpoint | None = Field(
        default=None, description="The cold-start checkpoint the later fine-tunes start from.",
    )
    sft_checkpoint: Checkpoint | None = Field(
        default=None, description="The SCoRe-SFT checkpoint (the SCoRe+OPD arm's RL starts from it).",
    )
    policy_version: int | None = Field(
        default=None, description="The student's policy version the run last loaded.", examples=[3],
    )


class RunInfo(BaseModel):
    """A run as `GET /v1/runs/{id}` reports it."""

    id: str = Field(description="Run id.", examples=["run-20250611-142233-3f2a9c"])
    name: str | None = Field(default=None, description="The config's label.", examples=["demo"])
    state: RunState = Field(description="queued | running | succeeded | failed | cancelled.")
    stage: str | None = Field(
        default=None, description="The stage running now (null before start and after the end).", examples=["mps"],
    )
    stages: dict[str, StageProgress] = Field(default_factory=dict, description="Progress of every stage, in order.")
    counters: dict[str, int | float] = Field(
        default_factory=dict,
        description="Running totals: tasks self-solved, repaired, hard; repairs; teacher tokens; dead letters; RL steps.",
        examples=[{"self_solved": 21, "repaired": 17, "hard": 2, "repairs": 23, "teacher_tokens": 48210}],
    )
    eval: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Held-out results of each evaluated policy (`success`, `n`, turns, tokens).",
        examples=[{"student-sft/v2": {"success": 0.62, "n": 64, "mean_turns": 4.1}}],
    )
    policy_version: int | None = Field(
        default=None, description="The student's policy version the run last loaded.", examples=[3],
    )
    error: str | None = Field(
        default=None, description="Why the run failed.",
        examples=["stage mps: teacher service unreachable at http://teacher:8002"],
    )
    created_at: float = Field(description="Unix time of creation.", examples=[1749651753.0])
    updated_at: float = Field(description="Unix time of the last change.", examples=[1749652101.7])
    artifacts: str = Field(
        description="Directory of the run's datasets, report and plots.",
        examples=["/data/score/runs/run-20250611-142233-3f2a9c"],
    )
    config: RunConfig = Field(description="The run's config, defaults filled in.")


class RunList(BaseModel):
    runs: list[RunInfo] = Field(description="Runs, newest first.")


class RunEvent(BaseModel):
    """One progress event (`GET /v1/runs/{id}/events`, Server-Sent Events)."""

    id: str = Field(description="Event id (the Redis stream entry id); resume with `Last-Event-ID`.")
    run_id: str = Field(description="The run.")
    type: Literal["state", "stage", "progress", "eval", "rl_step", "dead_letter", "log"] = Field(
        description="`state`: run state changed; `stage`: a stage started or finished; `progress`: items done; "
        "`eval`: held-out results; `rl_step`: a GRPO step's metrics; `dead_letter`: an item gave up; `log`: other."
    )
    stage: str | None = Field(default=None, description="The stage concerned.")
    message: str = Field(description="Human-readable summary.")
    data: dict[str, Any] = Field(default_factory=dict, description="Structured details.")
    time: float = Field(description="Unix time.")


class DeadLetter(BaseModel):
    stage: str = Field(description="Stage whose item gave up.", examples=["mps"])
    item_key: str = Field(description="The item's idempotency key.", examples=["arith-dc23fdeb16"])
    error: str = Field(description="The last error.", examples=["teacher: HTTP 503 (not ready)"])
    attempts: int = Field(description="Deliveries tried.", examples=[3])
    time: float = Field(description="Unix time it was dead-lettered.", examples=[1749651990.4])


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetter] = Field(description="Items that ended in a dead-letter stream, oldest first.")
