"""The run config (`POST /v1/runs`): task source, service URLs and each stage's parameters.

Stage parameters default to the paper's settings; the built-in demo overrides the learning rates and sizes for
its tiny models.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.names import SAFE_NAME
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


# What a report says above results on validation tasks, so they are never read as held-out results.
VALIDATION_NOTE = ("Evaluated on **validation** tasks (training-split tasks that no pool used), for choosing settings; "
                   "these are not held-out results.")


def eval_set_name(eval_split: str | None) -> str:
    """What reports call the evaluated tasks: `held-out`, or `validation` when settings are chosen on them."""
    return "validation" if eval_split == "validation" else "held-out"


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

    @property
    def eval_set(self) -> str:
        """What reports call the evaluated tasks (`eval_set_name`)."""
        return eval_set_name(self.eval_split)

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
        description="Share of the tasks the student solved alone that are kept for SCoRe-SFT (the paper keeps about half), "
        "chosen by a hash of the task id and the training seed: two runs of one config keep the same ones.",
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
        description="GRPO settings; the default learning rate is the paper's 7e-7 (no KL, clip 0.2). `max_staleness` 1 "
        "streams the steps: the next step's groups are sampled and rewarded while the trainer updates on this one's "
        "(one policy version old when trained on, the step's `staleness`); 0 samples, rewards and updates in turn.",
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


class OPDParams(BaseModel):
    """On-policy distillation from the cold-start checkpoint: the student samples whole episodes on the training
    tasks SCoRe used, the teacher model scores the tokens it wrote (`POST /v1/logprobs`), and each GRPO step follows
    the per-token advantage -coef * (log p_student - log p_teacher). Needs a teacher with a model."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Train and evaluate the OPD arm (`opd`, `eval_opd`).",
                          examples=[True])
    steps: int = Field(
        default=20, ge=1, le=100_000,
        description="Most OPD steps. With `equal_tokens`, the arm stops earlier once its teacher tokens reach the "
        "budget.", examples=[20],
    )
    equal_tokens: bool = Field(
        default=True,
        description="Stop after the step whose teacher tokens (every token the teacher read to score) reach SCoRe's "
        "teacher spend after cold start, the budget of `baseline_tokens`, so the arms compare at equal teacher tokens.",
        examples=[True],
    )
    prompts_per_step: int = Field(default=8, ge=1, le=1024, description="Tasks per step.", examples=[8])
    group_size: int = Field(default=2, ge=1, le=64, description="Episodes sampled per task.", examples=[2])
    max_turns: int = Field(default=8, ge=1, le=32, description="Turn limit of an episode.", examples=[8])
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, description="Student sampling temperature.",
                               examples=[1.0])
    max_tokens: int = Field(default=256, ge=8, le=8192, description="Token budget of one student turn.",
                            examples=[256])
    eval_every: int = Field(
        default=0, ge=0, le=100_000,
        description="Measure the arm every this many steps (and before the first and after the last): greedy success "
        "on the first `eval_tasks` evaluation tasks, and the student's reverse KL to the teacher per generated token "
        "on episodes it samples there (temperature 1). Measurement only: its teacher tokens are not the arm's spend. "
        "0: only the final evaluation (`eval_opd`).", examples=[5],
    )
    eval_tasks: int = Field(default=32, ge=1, le=4096, description="Evaluation tasks each `eval_every` measurement uses.",
                            examples=[32])
    task_reward: bool = Field(
        default=False,
        description="Also train on the task reward (1 for a correct final answer, else 0) through group advantages, "
        "beside the reverse-KL term (KDRL-style). Off: pure on-policy distillation; the reward is still reported.",
        examples=[False],
    )
    hyperparameters: GRPOHyperparameters = Field(
        default_factory=lambda: GRPOHyperparameters(learning_rate=1e-3, teacher_kl_coef=1.0, max_staleness=0),
        description="The update's settings; `teacher_kl_coef` weighs the reverse KL to the teacher (must be > 0; 1 is "
        "Tinker's default). The learning rate, 1e-3, was chosen on validation tasks for the built-in wide student "
        "(docs/opd.md); models of real size need far smaller ones. `max_staleness` 1 streams the steps: the next "
        "step's episodes are sampled and scored while the trainer updates on this one's, so they are one policy "
        "version old when trained on (the step's `staleness`); 0 samples, scores and updates in turn.",
    )

    @model_validator(mode="after")
    def _distills(self) -> "OPDParams":
        if self.hyperparameters.teacher_kl_coef <= 0:
            raise ValueError("opd.hyperparameters.teacher_kl_coef must be > 0: it is what on-policy distillation trains on")
        return self


class ScoreOPDParams(BaseModel):
    """SCoRe-RL with on-policy distillation: the same RL stage (`rl`'s prefixes, groups, rewards and settings) run
    again from the SCoRe-SFT checkpoint, with the teacher's reverse KL on the student's tokens added to the key-step
    reward's advantages. Evaluated as `score_opd`; the SCoRe policy the run ends on stays SCoRe-RL's."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Train and evaluate the SCoRe+OPD arm (needs `rl.steps` > 0 "
                          "and a model teacher).", examples=[True])
    teacher_kl_coef: float = Field(
        default=1.0, gt=0.0, le=100.0,
        description="Weight of the reverse-KL term (the trainer's `teacher_kl_coef`); every other RL setting is `rl`'s.",
        examples=[1.0],
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
    opd: OPDParams = Field(default_factory=OPDParams, description="On-policy distillation arm (needs a model teacher).")
    score_opd: ScoreOPDParams = Field(default_factory=ScoreOPDParams,
                                      description="SCoRe-RL plus on-policy distillation arm (needs a model teacher).")
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
