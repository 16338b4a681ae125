"""Coordinator runs (`/v1/runs`): the run config, a run's state, its events, trajectories and dead letters.

A run moves tasks through the SCoRe stages (`bc_init -> mps -> sft -> rl`, with `eval` after each, and the
plain-distillation `baseline`). Stage parameters default to the paper's settings; the built-in demo
overrides the learning rates and sizes for its tiny models.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.names import SAFE_NAME
from shared.schemas.agent import Step, Task
from shared.schemas.rl import GRPOHyperparameters
from shared.schemas.training import ReportTo, SFTHyperparameters

RUN_NAME = SAFE_NAME


def safe_label(value: str | None) -> str | None:
    """A run or experiment label names folders and checkpoint series: letters, digits, `._-` only."""
    if value is not None and not RUN_NAME.match(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


FAMILIES = ("arith", "kb")
REWARD_BOUND = 1000.0  # rewards are scores of one episode; GRPO normalises them per group anyway


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
          "baseline_tokens", "eval_baseline_tokens", "control", "eval_control", "eval_teacher", "report")


# --- config ------------------------------------------------------------------------------------


class TaskSource(BaseModel):
    """Where a run's tasks come from: the built-in suite, or a task file (JSONL: id, question, true_answer)."""

    model_config = ConfigDict(extra="forbid")

    suite: Literal["builtin"] | None = Field(
        default="builtin", description="`builtin`: procedurally generated tasks with held-out splits. Null with `path`.",
        examples=["builtin"],
    )
    families: list[Literal["arith", "kb"]] = Field(
        default_factory=lambda: ["arith"], min_length=1,
        description="Built-in families to draw from (`arith`: Python arithmetic chains, `kb`: multi-hop search).",
        examples=[["arith", "kb"]],
    )
    path: str | None = Field(
        default=None, description="A task file (JSONL, one task per line) on the coordinator's filesystem.",
        examples=["/data/tasks.jsonl"],
    )
    eval_path: str | None = Field(
        default=None,
        description="Held-out task file. Without it, held-out tasks are taken from `path` by a stable hash of "
        "the question (about 20%), so train and eval never overlap.",
        examples=["/data/tasks/eval.jsonl"],
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seeds task generation (built-in) and the order tasks are used in.",
        examples=[0],
    )
    n_bc_init: int = Field(
        default=32, ge=1, le=100_000, description="Training tasks the teacher solves for cold start.", examples=[2],
    )
    n_train: int = Field(
        default=64, ge=1, le=100_000, description="Training tasks for mentored problem solving (SCoRe-SFT data).",
        examples=[2],
    )
    n_rl: int = Field(
        default=32, ge=0, le=100_000,
        description="Training tasks, disjoint from the SFT ones, whose verified prefixes seed SCoRe-RL.",
        examples=[1],
    )
    n_eval: int = Field(
        default=64, ge=1, le=100_000, description="Held-out tasks every policy is evaluated on.", examples=[2],
    )
    n_reserve: int = Field(
        default=0, ge=0, le=100_000,
        description="Further training tasks (disjoint from the others) the equal-teacher-token baseline draws "
        "teacher trajectories from until SCoRe's teacher spend is used up (`baseline.equal_tokens`).",
        examples=[512],
    )
    eval_seed: int | None = Field(
        default=None, ge=0, le=2**32 - 1,
        description="Seeds the choice of held-out tasks apart from `seed` (null: `seed`), so runs with different "
        "training seeds are evaluated on one fixed held-out set.", examples=[0],
    )
    eval_split: Literal["heldout", "validation"] = Field(
        default="heldout",
        description="`validation`: evaluate on tasks of the training split that no pool uses (disjoint from the "
        "held-out split), for choosing hyperparameters without touching held-out tasks.",
        examples=["heldout"],
    )

    @model_validator(mode="after")
    def _one_source(self) -> "TaskSource":
        if self.path is None and self.suite is None:
            raise ValueError("give either `suite: builtin` or a task file `path`")
        if self.path is not None:
            self.suite = None
        if self.eval_path is not None and self.path is None:
            raise ValueError("`eval_path` needs `path` (the training task file)")
        return self


class ServiceURLs(BaseModel):
    """Model services this run uses; unset fields take the coordinator's SCORE_*_URL settings."""

    model_config = ConfigDict(extra="forbid")

    student_url: str | None = Field(default=None, description="Student service base URL.", examples=["http://student:8001"])
    teacher_url: str | None = Field(default=None, description="Teacher service base URL.", examples=["http://teacher:8002"])
    trainer_url: str | None = Field(default=None, description="Trainer service base URL.", examples=["http://trainer:8003"])

    @field_validator("student_url", "teacher_url", "trainer_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8001")
        return value.rstrip("/") if value else value


class BCInitParams(BaseModel):
    """Cold start: the teacher solves tasks; its verified-correct trajectories fine-tune the base student."""

    model_config = ConfigDict(extra="forbid")

    base: str | None = Field(
        default=None, description="Student checkpoint to start from (trainer reference); default: the built-in student.",
        examples=["builtin:student"],
    )
    max_turns: int = Field(
        default=8, ge=1, le=32, description="Turn limit of the teacher's episodes (8 in the paper).", examples=[8],
    )
    hyperparameters: SFTHyperparameters = Field(
        default_factory=SFTHyperparameters, description="SFT settings of the cold-start fine-tune."
    )


class MPSParams(BaseModel):
    """Mentored problem solving: the student acts, the teacher corrects its first critical error."""

    model_config = ConfigDict(extra="forbid")

    max_repairs: int = Field(
        default=3, ge=0, le=16, description="Teacher repairs per task (3 in the paper).", examples=[3],
    )
    max_turns: int = Field(
        default=8, ge=1, le=32, description="Turn limit of an episode (8 in the paper).", examples=[8],
    )
    strategy: Literal["verify", "judge"] = Field(
        default="verify", description="How the teacher locates the first critical error (see the teacher's docs).",
        examples=["verify"],
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Student sampling temperature.", examples=[0.7])
    max_tokens: int = Field(default=256, ge=8, le=8192, description="Token budget of one student turn.", examples=[256])
    self_solved_share: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="Share of the tasks the student solved alone that are kept for SCoRe-SFT (the paper keeps about half).",
        examples=[0.5],
    )
    correction_batch: int = Field(
        default=32, ge=1, le=256,
        description="Most failed trajectories of concurrent tasks gathered into one teacher corrections request, "
        "so the teacher batches its work across them (1: one request per trajectory). Outcomes do not depend on it.",
        examples=[32],
    )
    correction_wait_ms: int = Field(
        default=20, ge=0, le=10_000,
        description="How long the first trajectory of a corrections batch waits for others before the batch is sent.",
        examples=[20],
    )


class SFTStageParams(BaseModel):
    """SCoRe-SFT: fine-tune the cold-start student on repaired (and some self-solved) trajectories."""

    model_config = ConfigDict(extra="forbid")

    hyperparameters: SFTHyperparameters = Field(default_factory=SFTHyperparameters, description="SFT settings.")
    replay_bc_init: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of the cold-start trajectories mixed back into SCoRe-SFT, so a small repaired set does "
        "not make the student forget what cold start taught it (0: repaired and self-solved trajectories only).",
        examples=[0.1],
    )


class KeyStepRewards(BaseModel):
    """SCoRe-RL's reward for a short-horizon episode that starts at a verified prefix."""

    model_config = ConfigDict(extra="forbid")

    correct: float = Field(default=1.0, ge=-REWARD_BOUND, le=REWARD_BOUND, description="The final answer is correct.", examples=[1.0])
    wrong_final: float = Field(
        default=0.0, ge=-REWARD_BOUND, le=REWARD_BOUND,
        description="The first new step itself gives a wrong final answer (0 in the official reward).",
        examples=[0.0],
    )
    equivalent: float = Field(
        default=0.5, ge=-REWARD_BOUND, le=REWARD_BOUND, description="Wrong answer, but the first new step is equivalent to the teacher's corrected step.",
        examples=[0.5],
    )
    repeat: float = Field(
        default=0.0, ge=-REWARD_BOUND, le=REWARD_BOUND, description="Wrong answer, and the first new step repeats the student's original mistake.",
        examples=[0.0],
    )
    other: float = Field(
        default=0.1, ge=-REWARD_BOUND, le=REWARD_BOUND, description="Wrong answer, and the first new step is something else.", examples=[0.1],
    )
    no_answer: float = Field(default=0.0, ge=-REWARD_BOUND, le=REWARD_BOUND, description="No final answer was given.", examples=[0.0])


class RLParams(BaseModel):
    """SCoRe-RL: GRPO from verified prefixes of tasks not used for SFT."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=20, ge=0, le=100_000, description="GRPO steps (0 skips RL).", examples=[2])
    prompts_per_step: int = Field(
        default=8, ge=1, le=1024, description="Prefixes (groups) per GRPO step.", examples=[2],
    )
    group_size: int = Field(default=16, ge=2, le=64, description="Samples per prefix (16 in the paper).", examples=[4])
    max_turns: int = Field(
        default=8, ge=1, le=32,
        description="Turns the student may take after the prefix (8 in the paper); raised, for built-in tasks, to the "
        "longest remaining gold horizon of a step's prefixes so every episode can reach the answer.",
        examples=[8],
    )
    temperature: float = Field(
        default=1.0, ge=0.0, le=2.0, description="Student sampling temperature for groups.", examples=[0.8],
    )
    max_tokens: int = Field(default=256, ge=8, le=8192, description="Token budget of one student turn.", examples=[256])
    rewards: KeyStepRewards = Field(default_factory=KeyStepRewards, description="Reward values (the paper's by default).")
    hyperparameters: GRPOHyperparameters = Field(
        default_factory=lambda: GRPOHyperparameters(learning_rate=7e-7, max_staleness=0),
        description="GRPO settings; the default learning rate is the paper's 7e-7 (no KL, clip 0.2).",
    )


class EvalParams(BaseModel):
    """Held-out evaluation after each stage."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=8, ge=1, le=32, description="Turn limit of an evaluation episode.", examples=[8])
    max_tokens: int = Field(default=256, ge=8, le=8192, description="Token budget of one turn.", examples=[256])
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy (deterministic).", examples=[0.0])
    teacher: bool = Field(
        default=True, description="Also measure the teacher's held-out success (once per run).", examples=[True],
    )


class BaselineParams(BaseModel):
    """Plain trajectory distillation: the base student fine-tuned on full teacher trajectories."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Train and evaluate the baseline.", examples=[True])
    hyperparameters: SFTHyperparameters = Field(default_factory=SFTHyperparameters, description="SFT settings.")
    start: Literal["base", "cold_start"] = Field(
        default="base",
        description="`base`: fine-tune the base student on the cold-start and training-task trajectories. "
        "`cold_start`: fine-tune the cold-start checkpoint SCoRe starts from on teacher trajectories of the tasks "
        "SCoRe used (SFT and RL pools), replaying cold-start rows as SCoRe-SFT does: the fair comparison.",
        examples=["cold_start"],
    )
    equal_tokens: bool = Field(
        default=False,
        description="Also train `baseline_tokens`: from the cold-start checkpoint, on teacher trajectories of "
        "reserve tasks (`tasks.n_reserve`) taken in order until SCoRe's teacher spend after cold start (prompt "
        "plus written tokens) is used up.", examples=[True],
    )


class ControlParams(BaseModel):
    """A control: the cold-start checkpoint trained further on the cold-start data only."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False, description="Train and evaluate the control, for as many optimizer steps as SCoRe-SFT "
        "and SCoRe-RL took together (the SFT stage's hyperparameters otherwise).", examples=[True],
    )


class RunConfig(BaseModel):
    """Everything a run needs; every field has a default, so `{}` is a valid run on the built-in suite."""

    # A whole run on a handful of built-in tasks with two RL steps: minutes on CPU, not hours.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "demo",
        "tasks": {"families": ["arith", "kb"], "seed": 0, "n_bc_init": 2, "n_train": 2, "n_rl": 1, "n_eval": 2},
        "mps": {"max_repairs": 3, "strategy": "verify", "temperature": 0.7},
        "sft": {"hyperparameters": {"max_steps": 4}},
        "rl": {"steps": 2, "prompts_per_step": 1, "group_size": 2, "max_turns": 2},
        "baseline": {"enabled": False},
    }]})

    name: str | None = Field(default=None, description="A label for listings (letters, digits, `._-`).", examples=["demo"])
    tasks: TaskSource = Field(default_factory=TaskSource, description="Task source and how many tasks each stage uses.")
    services: ServiceURLs = Field(default_factory=ServiceURLs, description="Model service URLs.")
    bc_init: BCInitParams = Field(default_factory=BCInitParams, description="Cold start.")
    mps: MPSParams = Field(default_factory=MPSParams, description="Mentored problem solving.")
    sft: SFTStageParams = Field(default_factory=SFTStageParams, description="SCoRe-SFT.")
    rl: RLParams = Field(default_factory=RLParams, description="SCoRe-RL.")
    eval: EvalParams = Field(default_factory=EvalParams, description="Held-out evaluation.")
    baseline: BaselineParams = Field(default_factory=BaselineParams, description="Plain-distillation baseline.")
    report_to: list[ReportTo] = Field(
        default_factory=list,
        description="Experiment trackers for every SFT job and the RL session of the run (added to their "
        "hyperparameters' own `report_to`). `tensorboard`: event files under SCORE_HOME/tensorboard/<run id>-<stage>/.",
        examples=[["tensorboard"]],
    )
    control: ControlParams = Field(default_factory=ControlParams, description="Cold-start-only control.")
    max_attempts: int = Field(
        default=3, ge=1, le=20,
        description="Deliveries of a work item before it goes to the stage's dead-letter stream.",
        examples=[3],
    )
    concurrency: int = Field(
        default=16, ge=1, le=512, description="Work items a worker processes at once (the services batch them).",
        examples=[16],
    )

    _safe_name = field_validator("name")(safe_label)


# --- state -------------------------------------------------------------------------------------


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


TeacherPurpose = Literal["cold_start_trajectories", "corrections", "verify_rollouts", "judgements", "rl_judgements",
                         "baseline_trajectories", "reserve_trajectories", "eval_trajectories"]
TEACHER_PURPOSES: tuple[str, ...] = ("cold_start_trajectories", "corrections", "verify_rollouts", "judgements",
                                     "rl_judgements", "baseline_trajectories", "reserve_trajectories",
                                     "eval_trajectories")


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
