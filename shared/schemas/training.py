"""Trainer jobs (`/v1/jobs`): the request, the SFT hyperparameters, the job's state and its events.

States form an explicit state machine (`VALID_TRANSITIONS`); a request that would need an illegal
transition (cancelling a finished job) is answered 409.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.names import SAFE_NAME
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.lora import LoRASettings
from shared.schemas.optimizer import LearningRate, OptimizerSettings

_JOB_ID = SAFE_NAME


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


# running -> queued: the service stopped (or was killed) mid-job; the job waits to resume from its last checkpoint.
VALID_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running, JobState.cancelled, JobState.failed}),
    JobState.running: frozenset({JobState.succeeded, JobState.failed, JobState.cancelled, JobState.queued}),
    JobState.succeeded: frozenset(),
    JobState.failed: frozenset(),
    JobState.cancelled: frozenset(),
}
TERMINAL_STATES = frozenset(state for state, targets in VALID_TRANSITIONS.items() if not targets)


class Message(BaseModel):
    """One chat message of a training conversation."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"] = Field(
        description="Who speaks; loss falls only on `assistant`.", examples=["assistant"],
    )
    content: str = Field(
        description="The message text.",
        examples=["<thought>Start from 747: add 822.</thought>\n<code>a = 747 + 822\nprint(a)</code>"],
    )
    weight: Literal[0, 1] = Field(
        default=1,
        description="OpenAI fine-tuning's per-message weight: an assistant turn with weight 0 stays in the context "
        "but carries no loss (a malformed or unchecked turn that must not be learnt as if it were right).",
        examples=[1],
    )


class Conversation(BaseModel):
    """One training example in OpenAI `messages` form."""

    model_config = ConfigDict(extra="allow")

    messages: list[Message] = Field(
        min_length=1,
        description="The conversation; it needs at least one assistant turn of weight 1 (every such turn is "
        "trained on).",
    )

    @model_validator(mode="after")
    def _has_assistant_turn(self) -> "Conversation":
        if not any(message.role == "assistant" and message.weight == 1 for message in self.messages):
            raise ValueError("has no assistant turn of weight 1 (nothing to train on); add one or drop the example")
        return self


class DatasetSpec(BaseModel):
    """Training data: a messages JSONL file readable by the trainer, or the rows inline."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        default=None, description="A JSONL file, one `{\"messages\": [...]}` object a line (OpenAI messages format).",
        examples=["/data/score/runs/run-3f2a9c/datasets/sft.jsonl"],
    )
    rows: list[Conversation] | None = Field(default=None, min_length=1, description="The conversations inline.")

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetSpec":
        if (self.path is None) == (self.rows is None):
            raise ValueError("give exactly one of `path` (messages JSONL) or `rows` (inline conversations)")
        return self


# Experiment trackers a training job can write to (TRL's `report_to`).
ReportTo = Literal["tensorboard"]


class SFTHyperparameters(OptimizerSettings, LoRASettings):
    """Supervised fine-tuning settings. Every field has a default; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    num_epochs: float = Field(
        default=3.0, gt=0, le=1000,
        description="Passes over the dataset (fractions allowed). More epochs fit the data more closely and risk "
        "overfitting small datasets. Ignored when `max_steps` is set.",
        examples=[3.0],
    )
    max_steps: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="Optimizer steps to run; overrides `num_epochs`. Useful for fixed-budget runs and tests.",
        examples=[200],
    )
    learning_rate: LearningRate = Field(
        default=2e-3,
        description="Peak AdamW learning rate, reached after warmup. The default suits the built-in tiny models; "
        "pretrained 1-10B models usually want 1e-5 to 2e-5 (1e-4 to 2e-4 with LoRA).",
        examples=[0.002],
    )
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warmup: cosine to `min_lr_ratio`, linear to it, or constant.",
        examples=["cosine"],
    )
    warmup_ratio: float = Field(
        default=0.05, ge=0, lt=1,
        description="Share of the steps spent ramping the learning rate up linearly from 0; steadies early Adam steps.",
        examples=[0.05],
    )
    min_lr_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Final learning rate as a share of the peak (cosine and linear schedules).",
        examples=[0.1],
    )
    micro_batch_tokens: int = Field(
        default=4096, ge=16, le=1_048_576,
        description="Token budget of one packed micro-batch on one process: conversations are packed into rows of "
        "at most this many tokens without padding. Larger is faster until memory runs out.",
        examples=[4096],
    )
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024,
        description="Micro-batches each process accumulates per optimizer step. Global batch = "
        "micro_batch_tokens x gradient_accumulation_steps x nproc.",
        examples=[2],
    )
    layout: Literal["auto", "bucketed", "packed"] = Field(
        default="auto",
        description="How conversations share a micro-batch. `packed`: end to end in one row with per-conversation "
        "position ids (no padding; cheapest with flash-attention, whose varlen kernels skip cross-conversation "
        "pairs). `bucketed`: similar lengths in a padded batch (little padding; attention per conversation; best "
        "with SDPA/eager kernels, e.g. on CPU). `auto`: packed under flash-attention, else bucketed.",
        examples=["auto"],
    )
    max_seq_length: int = Field(
        default=2048, ge=16, le=1_048_576,
        description="Longest conversation in tokens; longer ones are truncated from the end (their loss mask too). "
        "Must not exceed micro_batch_tokens.",
        examples=[2048],
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seeds the data order, packing and initialisation of LoRA weights.", examples=[0],
    )
    save_every_steps: int = Field(
        default=50, ge=1, le=10_000_000,
        description="Write an intermediate training state (model, optimizer, scheduler, RNG, data position) every "
        "this many steps; a killed job resumes from the latest one. Lower = less lost work, more disk writes.",
        examples=[50],
    )
    log_every_steps: int = Field(
        default=1, ge=1, le=10_000_000, description="Report metrics every this many optimizer steps.", examples=[1],
    )
    nproc: int = Field(
        default=1, ge=1, le=64,
        description="Processes for data-parallel training (DDP under torchrun: gloo on CPU, nccl on GPU, one "
        "process per GPU). 1 runs a single process.",
        examples=[1],
    )
    cpu_threads: int | None = Field(
        default=None, ge=1, le=512,
        description="Torch threads per training process on CPU. Default: cores / nproc. One thread is steadier "
        "on a machine whose cores other work also uses (idle threads spin at every parallel region).",
        examples=[1],
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where to train: `auto` takes CUDA when available. bf16 on CUDA, fp32 on CPU.",
        examples=["cpu"],
    )
    report_to: list[ReportTo] = Field(
        default_factory=list,
        description="Experiment trackers that receive the training metrics besides the job's events. `tensorboard` "
        "writes event files under SCORE_HOME/tensorboard/<output_name>/sft/ (`tensorboard --logdir "
        "SCORE_HOME/tensorboard`). Empty: none.",
        examples=[["tensorboard"]],
    )
    merge_lora: bool = Field(
        default=True,
        description="With `lora`, publish the adapter merged into the base weights (a plain checkpoint). False "
        "publishes the PEFT adapter directory: far smaller, and the only form vLLM loads at run time "
        "(`/v1/load_lora_adapter`). The student, teacher and trainer load either.",
        examples=[True],
    )

    @model_validator(mode="after")
    def _consistent(self) -> "SFTHyperparameters":
        if self.max_seq_length > self.micro_batch_tokens:
            raise ValueError(
                f"max_seq_length ({self.max_seq_length}) exceeds micro_batch_tokens ({self.micro_batch_tokens}): "
                "raise micro_batch_tokens or lower max_seq_length so every conversation fits a micro-batch"
            )
        return self


class JobRequest(BaseModel):
    """Create a training job."""

    # Two optimizer steps on one inline conversation: a real job that finishes in seconds on the built-in student.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "kind": "sft", "base": "builtin:student", "job_id": "sft-arith-01", "output_name": "student-sft",
        "dataset": {"rows": [{"messages": [
            {"role": "user", "content": "Take the number 747, then add 822, then subtract 580. What number do you get?"},
            {"role": "assistant", "content": "<thought>Start from 747: add 822.</thought>\n<code>a = 747 + 822\n"
             "print(a)</code>"},
        ]}]},
        "hyperparameters": {"max_steps": 2, "learning_rate": 2e-3, "micro_batch_tokens": 1024, "max_seq_length": 512,
                            "cpu_threads": 1},
    }]})

    kind: Literal["sft"] = Field(default="sft", description="Job kind: `sft` (supervised fine-tuning).")
    base: str | None = Field(
        default=None,
        description="Model to start from: `builtin:<role>` (`builtin:student`, `builtin:teacher`, ...), a published "
        "checkpoint series `name` (its latest version), `name/vN`, or a checkpoint or LoRA adapter directory. "
        "Default: the built-in tiny student.",
        examples=["builtin:student"],
    )
    dataset: DatasetSpec = Field(description="Training conversations (messages JSONL path or inline rows).")
    hyperparameters: SFTHyperparameters = Field(
        default_factory=SFTHyperparameters, description="Optimisation settings; every field has a default."
    )
    output_name: str | None = Field(
        default=None,
        description="Checkpoint series the result is published to (next version). Default: `<kind>-<job id>`.",
        examples=["student-sft"],
    )
    job_id: str | None = Field(
        default=None,
        description="Caller-chosen id. Creating a job with an id that exists returns that job (idempotent retry).",
        examples=["sft-arith-01"],
    )

    @field_validator("job_id", "output_name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not _JOB_ID.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value


class JobMetrics(BaseModel):
    """Latest training metrics of a job."""

    model_config = ConfigDict(extra="allow")

    loss: float | None = Field(
        default=None, description="Mean loss per assistant token over the last logged step.", examples=[0.734],
    )
    tokens_per_s: float | None = Field(
        default=None, description="Trained-on tokens (all non-padding) per second, all processes.", examples=[5120.0],
    )
    learning_rate: float | None = Field(default=None, description="Learning rate of the last step.", examples=[0.0019])
    grad_norm: float | None = Field(default=None, description="Global gradient norm before clipping.", examples=[0.91])
    epoch: float | None = Field(default=None, description="Passes over the data so far.", examples=[1.25])
    tokens_seen: int | None = Field(
        default=None, description="Tokens processed so far (all processes).", examples=[81920],
    )
    padding_share: float | None = Field(
        default=None, description="Share of computed token slots that were padding.", examples=[0.04],
    )
    assistant_share: float | None = Field(
        default=None, description="Share of tokens that carry loss (assistant turns).", examples=[0.38],
    )


class JobInfo(BaseModel):
    """A job as `GET /v1/jobs/{id}` reports it."""

    id: str = Field(description="Job id.", examples=["sft-arith-01"])
    kind: str = Field(description="Job kind.", examples=["sft"])
    state: JobState = Field(description="queued | running | succeeded | failed | cancelled.")
    base: str = Field(description="Lineage label of the model it starts from.", examples=["builtin:student"])
    output_name: str = Field(description="Checkpoint series the result goes to.", examples=["student-sft"])
    step: int = Field(default=0, description="Optimizer steps done.", examples=[120])
    total_steps: int | None = Field(
        default=None, description="Optimizer steps planned (known once data is packed).", examples=[200],
    )
    metrics: JobMetrics = Field(default_factory=JobMetrics, description="Latest metrics.")
    eta_s: float | None = Field(
        default=None, description="Estimated seconds to finish, from recent step times.", examples=[48.5],
    )
    checkpoint: Checkpoint | None = Field(default=None, description="The published result, once succeeded.")
    error: str | None = Field(
        default=None, description="Why the job failed.",
        examples=["training process exited with code 1 (see train.log)"],
    )
    resumed_from_step: int | None = Field(
        default=None, description="Step of the intermediate state the job last resumed from (after a restart).",
        examples=[100],
    )
    attempts: int = Field(default=0, description="Times a training process was started for this job.", examples=[1])
    hyperparameters: SFTHyperparameters = Field(description="Settings in force.")
    created_at: float = Field(description="Unix time of creation.", examples=[1717170000.0])
    updated_at: float = Field(description="Unix time of the last change.", examples=[1717170420.5])


class JobList(BaseModel):
    jobs: list[JobInfo] = Field(description="Jobs, oldest first.")


class JobEvent(BaseModel):
    """One line of a job's event log (`GET /v1/jobs/{id}/events`)."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(description="Position in the job's log, from 0.")
    time: float = Field(description="Unix time.")
    type: Literal["state", "progress", "checkpoint", "log"] = Field(description="What happened.")
    state: JobState | None = Field(default=None, description="New state, for `state` events.")
    step: int | None = Field(default=None, description="Optimizer step, for `progress` and `checkpoint` events.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned, for `progress` events.")
    eta_s: float | None = Field(default=None, description="Estimated seconds to finish, for `progress` events.")
    metrics: dict | None = Field(default=None, description="Metrics at that step.")
    message: str | None = Field(default=None, description="Human-readable detail.")
