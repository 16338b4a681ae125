"""RL (GRPO) on the trainer service: sessions, hyperparameters, steps on groups of rollouts.

`POST /v1/rl/sessions` opens a session (a policy kept in the trainer's memory with its optimizer);
`POST /v1/rl/sessions/{id}/steps` applies one GRPO update to a batch of rollout groups and publishes
the result as the next checkpoint version, which the student loads with `POST /v1/weights`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from shared.names import SAFE_NAME
from shared.schemas.agent import MAX_POLICY_VERSION, MAX_TOKEN_ID, Episode
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.lora import LoRASettings
from shared.schemas.optimizer import LearningRate, OptimizerSettings
from shared.schemas.training import ReportTo

SESSION_ID = SAFE_NAME
MAX_STEP_SAMPLES = 4096  # samples per step; a bigger batch should be split into several steps by the caller


class GRPOHyperparameters(OptimizerSettings, LoRASettings):
    """How each GRPO step updates the policy. Defaults follow TRL's GRPOConfig and the SCoRe paper.

    With `lora`, every step publishes the adapter directory (never merged): what vLLM loads at run time.
    """

    model_config = ConfigDict(extra="forbid")

    learning_rate: LearningRate = Field(
        default=1e-6,
        description="AdamW learning rate. The paper uses 7e-7 for a 7B student; tiny models need far larger "
        "values (the built-in student moves within a few steps at 3e-4 to 2e-2; the demo uses 3e-4).",
        examples=[0.001],
    )
    report_to: list[ReportTo] = Field(
        default_factory=list,
        description="Experiment trackers that receive each step's metrics besides the step response. "
        "`tensorboard` writes event files under SCORE_HOME/tensorboard/<output_name>/rl/. Empty: none.",
        examples=[["tensorboard"]],
    )
    beta: float = Field(
        default=0.0, ge=0.0, le=100.0,
        description="KL coefficient to the reference model (the session's base weights, k3 estimator). 0 (the "
        "paper's setting, TRL's default) never loads the reference, saving its memory and forward pass.",
        examples=[0.0],
    )
    epsilon: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="Clip range of the importance ratio: tokens whose ratio leaves [1-epsilon, 1+epsilon_high] "
        "in the direction the advantage pushes get no gradient.",
        examples=[0.2],
    )
    epsilon_high: float | None = Field(
        default=None, gt=0.0, le=10.0,
        description="Upper clip bound; None = `epsilon` (symmetric). DAPO's clip-higher uses 0.28 to keep "
        "exploration on low-probability tokens.",
        examples=[0.28],
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Advantage normalisation: `group` divides (r - group mean) by the group's std (GRPO), `batch` "
        "by the batch's std, `none` only centres (Dr. GRPO: no question-difficulty bias).",
        examples=["group"],
    )
    loss_type: Literal["token_mean", "sequence_mean"] = Field(
        default="token_mean",
        description="Loss aggregation: `token_mean` averages over every generated token of the batch (TRL `dapo`, "
        "verl `token-mean`; no length bias); `sequence_mean` averages each sample's tokens then the samples "
        "(TRL `grpo`, verl `seq-mean-token-mean`).",
        examples=["token_mean"],
    )
    num_iterations: int = Field(
        default=1, ge=1, le=16,
        description="Update epochs over each batch (mu in the GRPO paper). 1 is strictly one optimizer step "
        "per batch; more reuses the batch and makes the clip matter.",
        examples=[1],
    )
    mini_batch_size: int = Field(
        default=8, ge=1, le=1024,
        description="Samples per forward/backward pass. Gradients are accumulated over the whole batch and "
        "normalised once, so this trades memory for speed without changing the update.",
        examples=[8],
    )
    max_staleness: int = Field(
        default=1, ge=0, le=1000,
        description="Oldest accepted sample: `policy_version >= current - max_staleness`. 0 = strictly on-policy "
        "(every sample from the version just published); 1 lets the student sample the next batch while the "
        "trainer updates on this one. Older samples are refused with 409.",
        examples=[1],
    )
    teacher_kl_coef: float = Field(
        default=0.0, ge=0.0, le=100.0,
        description="On-policy distillation: each generated token's advantage gains -teacher_kl_coef * (student "
        "log-probability - teacher log-probability), the sampled reverse KL to the teacher (Tinker's recipe; GKD with "
        "lambda 1), the student's side recomputed by the trainer at the weights being trained. Needs "
        "`teacher_logprobs` on every sample; the step reports `teacher_kl` (nats per generated token, before the "
        "update). 0 with teacher log-probabilities given: the KL is reported, not trained on.",
        examples=[1.0],
    )

    max_logprob_diff: float | None = Field(
        default=0.5, gt=0.0, le=1000.0,
        description="Trust bound on the behaviour log-probabilities. For samples from the weights being trained "
        "(`policy_version` equal to the session's), the step recomputes each generated token's log-probability; a "
        "sample whose mean |behaviour - recomputed| exceeds this (nats per token) is dropped from the loss and "
        "counted in `logprob_diff/dropped_samples` (a tokenisation or engine mismatch, not a policy change). "
        "Numerical noise is ~1e-6 in fp32 and ~0.01-0.05 in bf16. None: report the metrics, drop nothing.",
        examples=[0.5],
    )

    @model_validator(mode="after")
    def _consistent(self) -> "GRPOHyperparameters":
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(
                f"epsilon_high ({self.epsilon_high}) is below epsilon ({self.epsilon}); raise epsilon_high or leave it "
                "unset for a symmetric clip"
            )
        return self

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def effective_epsilon_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


class RLSessionCreate(BaseModel):
    """Open an RL session: a policy loaded from `base`, trained by GRPO steps, published as `output_name`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "session_id": "grpo-arith-01", "base": "builtin:student", "output_name": "student-rl",
        "initial_policy_version": 0, "hyperparameters": {"learning_rate": 1e-3, "epsilon_high": 0.28, "max_staleness": 1},
    }]})

    session_id: str | None = Field(
        default=None, pattern=SESSION_ID.pattern,
        description="Caller-chosen id (1-64 letters, digits, '.', '_', '-'). Creating an existing id with the same "
        "body returns it unchanged (idempotent); a different body is 409. Default: a random id.",
        examples=["grpo-arith-01"],
    )
    base: str | None = Field(
        default=None,
        description="Starting weights: `builtin:<role>`, a published checkpoint series `name` (its latest version), "
        "`name/vN`, or a checkpoint or LoRA adapter directory. Default: the built-in tiny student.",
        examples=["student-sft/v2"],
    )
    output_name: str | None = Field(
        default=None, pattern=SESSION_ID.pattern,
        description="Checkpoint series each step publishes into (next version each time). Default: `rl-<session_id>`.",
        examples=["student-rl"],
    )
    initial_policy_version: int = Field(
        default=0, ge=0, le=MAX_POLICY_VERSION,
        description="The policy_version the student serves for `base`; the first step publishes this + 1.",
        examples=[2],
    )
    hyperparameters: GRPOHyperparameters = Field(
        default_factory=GRPOHyperparameters, description="GRPO settings, fixed for the session's life."
    )
    save_optimizer_state: bool = Field(
        default=True,
        description="Write the AdamW state next to the session after each step so a restarted trainer continues "
        "with its moments. Costs two parameter-sized tensors of disk; off, a restart resets the moments.",
        examples=[True],
    )


class RLSessionInfo(BaseModel):
    """An RL session's state."""

    id: str = Field(description="Session id.", examples=["grpo-arith-01"])
    state: Literal["active", "closed"] = Field(
        description="`active` accepts steps; `closed` was deleted.", examples=["active"],
    )
    base: str = Field(
        description="Lineage label of the starting weights, e.g. `builtin:student` or `sft/v2`.",
        examples=["student-sft/v2"],
    )
    base_path: str = Field(
        description="Directory the starting weights were read from.",
        examples=["/data/score/checkpoints/student-sft/v2"],
    )
    output_name: str = Field(description="Checkpoint series the session publishes into.", examples=["student-rl"])
    initial_policy_version: int = Field(description="Policy version of `base`.", examples=[2])
    policy_version: int = Field(description="Version of the current policy (initial + steps taken).", examples=[4])
    steps: int = Field(description="GRPO steps applied so far.", examples=[2])
    hyperparameters: GRPOHyperparameters = Field(description="The session's GRPO settings.")
    save_optimizer_state: bool = Field(description="Whether the AdamW state is saved after each step.", examples=[True])
    checkpoint: Checkpoint | None = Field(description="Latest published checkpoint; null before the first step.")
    loaded: bool = Field(
        description="Whether the policy is in this process's memory (false after a restart until the next step).",
        examples=[True],
    )
    created_at: float = Field(description="Unix time of creation.", examples=[1717171000.5])
    updated_at: float = Field(description="Unix time of the last change.", examples=[1717171342.25])
    last_metrics: dict[str, float] = Field(
        default_factory=dict, description="Metrics of the latest step.",
        examples=[{"reward/mean": 0.55, "loss": 0.013, "grad_norm": 0.84, "clip_ratio": 0.02}],
    )


class RLSessionList(BaseModel):
    """RL sessions known to this trainer."""

    sessions: list[RLSessionInfo] = Field(description="Every session under SCORE_HOME/trainer/rl/, newest first.")


class RLSample(BaseModel):
    """One rollout of a group, token-exact as the student's `/v1/rollouts` returns it."""

    model_config = ConfigDict(extra="forbid")

    token_ids: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] = Field(
        min_length=2, description="Whole episode: prompt, model turns and observations.",
        examples=[[12, 87, 301, 45, 9, 220]],
    )
    loss_mask: list[Annotated[int, Field(ge=0, le=1)]] = Field(
        description="Per token: 1 = generated by the policy (trained), 0 = prompt/observation (ignored). Same length "
        "as token_ids; the first token cannot be 1 (nothing precedes it to predict it).",
        examples=[[0, 0, 1, 1, 0, 1]],
    )
    logprobs: list[Annotated[float, Field(ge=-1e9, le=1e-3)]] = Field(
        description="Per token: the behaviour policy's log-probability of the token (0.0 where loss_mask is 0). "
        "Same length as token_ids.",
        examples=[[0.0, 0.0, -0.21, -1.37, 0.0, -0.05]],
    )
    policy_version: int = Field(
        ge=0, le=MAX_POLICY_VERSION, description="Policy version that sampled this rollout (staleness check).",
        examples=[3],
    )
    reward: float = Field(ge=-1e6, le=1e6, description="Scalar reward of the rollout.", examples=[1.0])
    prompt_length: int | None = Field(
        default=None, ge=0, le=2**31 - 1,
        description="Tokens before the first model turn; when given, loss_mask must be 0 on all of them.",
        examples=[2],
    )
    teacher_logprobs: list[Annotated[float, Field(ge=-1e9, le=1e-3)]] | None = Field(
        default=None,
        description="Per token: the teacher's log-probability of the token (the teacher service's `POST /v1/logprobs`; "
        "0.0 where loss_mask is 0). Same length as token_ids. Required when the session's `teacher_kl_coef` > 0.",
        examples=[[0.0, 0.0, -0.05, -0.4, 0.0, -0.01]],
    )
    token_advantages: list[Annotated[float, Field(ge=-1e6, le=1e6)]] | None = Field(
        default=None,
        description="Per token: an advantage added to the sample's group advantage (e.g. a caller's own dense "
        "distillation signal). Same length as token_ids; ignored where loss_mask is 0.",
        examples=[[0.0, 0.0, 0.1, -0.3, 0.0, 0.02]],
    )

    @classmethod
    def from_episode(cls, episode: Episode, reward: float) -> "RLSample":
        """The training sample of a student rollout (`POST /v1/rollouts` episode) with its reward."""
        if episode.policy_version is None:
            raise ValueError(f"episode of task {episode.task_id!r} carries no policy_version; it is not a rollout")
        return cls(
            token_ids=episode.token_ids, loss_mask=episode.loss_mask, logprobs=episode.logprobs,
            policy_version=episode.policy_version, reward=reward, prompt_length=episode.prompt_length,
        )

    @field_validator("token_ids")
    @classmethod
    def _non_negative_ids(cls, value: list[int]) -> list[int]:
        if min(value) < 0:
            raise ValueError(f"token id {min(value)} is negative")
        return value

    @field_validator("loss_mask")
    @classmethod
    def _mask_matches(cls, value: list[int], info: ValidationInfo) -> list[int]:
        _same_length(value, info, "loss_mask")
        if any(bit not in (0, 1) for bit in value):
            raise ValueError("loss_mask values must be 0 or 1")
        if value and value[0] == 1:
            raise ValueError("loss_mask[0] must be 0: the first token has no preceding context to be predicted from")
        return value

    @field_validator("logprobs")
    @classmethod
    def _logprobs_match(cls, value: list[float], info: ValidationInfo) -> list[float]:
        _same_length(value, info, "logprobs")
        for position, logprob in enumerate(value):
            if not math.isfinite(logprob) or logprob > 1e-3:
                raise ValueError(
                    f"logprobs[{position}] = {logprob} is not a log-probability (must be finite and <= 0); send "
                    "log-probabilities, not probabilities"
                )
        return value

    @field_validator("teacher_logprobs", "token_advantages")
    @classmethod
    def _per_token_aligned(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if value is None:
            return value
        _same_length(value, info, info.field_name)
        for position, number in enumerate(value):
            if not math.isfinite(number):
                raise ValueError(f"{info.field_name}[{position}] = {number} is not a finite number")
        return value

    @field_validator("reward")
    @classmethod
    def _finite_reward(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("reward must be a finite number")
        return value

    @field_validator("prompt_length")
    @classmethod
    def _prompt_unmasked(cls, value: int | None, info: ValidationInfo) -> int | None:
        ids, mask = info.data.get("token_ids"), info.data.get("loss_mask")
        if value is None or ids is None or mask is None:
            return value
        if value > len(ids):
            raise ValueError(f"prompt_length {value} exceeds the sample's {len(ids)} tokens")
        if any(mask[:value]):
            raise ValueError(
                f"loss_mask has 1s inside the prompt (first {value} tokens); prompt tokens are not trained"
            )
        return value


def _same_length(value: list, info: ValidationInfo, field: str) -> None:
    ids = info.data.get("token_ids")
    if ids is not None and len(value) != len(ids):
        raise ValueError(
            f"{field} has {len(value)} entries but token_ids has {len(ids)}; they must align token by token"
        )


class RolloutGroup(BaseModel):
    """The samples of one prompt; advantages are relative to the group's rewards."""

    model_config = ConfigDict(extra="forbid")

    samples: list[RLSample] = Field(
        min_length=1,
        description="Rollouts of one prompt (e.g. 16 in the paper). A group of one, or one whose rewards are all "
        "equal, carries zero advantage (it still counts in the token mean and the metrics).",
    )
    prompt_id: str | None = Field(
        default=None, description="Task or prefix id, for logs only.", examples=["arith-dc23fdeb16"],
    )


class RLStepRequest(BaseModel):
    """One GRPO update on a batch of rollout groups."""

    # One group of two short rollouts of a built-in task: one solved it (reward 1), one did not.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "step_id": "grpo-arith-01-step-0001",
        "groups": [{"prompt_id": "arith-dc23fdeb16", "samples": [
            {"token_ids": [12, 87, 301, 45, 9, 220], "loss_mask": [0, 0, 1, 1, 0, 1],
             "logprobs": [0.0, 0.0, -0.21, -1.37, 0.0, -0.05], "policy_version": 0, "reward": 1.0, "prompt_length": 2},
            {"token_ids": [12, 87, 302, 47, 9, 221], "loss_mask": [0, 0, 1, 1, 0, 1],
             "logprobs": [0.0, 0.0, -1.93, -0.88, 0.0, -2.4], "policy_version": 0, "reward": 0.1, "prompt_length": 2},
        ]}],
    }]})

    groups: list[RolloutGroup] = Field(min_length=1, description="Rollout groups, one per prompt.")
    step_id: str | None = Field(
        default=None, max_length=128,
        description="Idempotency key: resending the step that was applied last with the same step_id returns its "
        "result again instead of applying it twice (safe retries after a lost response).",
        examples=["grpo-arith-01-step-0003"],
    )

    @model_validator(mode="after")
    def _bounded(self) -> "RLStepRequest":
        total = sum(len(group.samples) for group in self.groups)
        if total > MAX_STEP_SAMPLES:
            raise ValueError(f"{total} samples exceed the limit of {MAX_STEP_SAMPLES} per step; split the batch")
        return self


class RLStepResponse(BaseModel):
    """The result of one step: the new policy version and where its weights are."""

    session_id: str = Field(description="Session id.", examples=["grpo-arith-01"])
    step: int = Field(description="Steps applied in the session, this one included.", examples=[2])
    policy_version: int = Field(
        description="Version of the updated policy; load `checkpoint.path` as this version.", examples=[4],
    )
    checkpoint: Checkpoint = Field(description="The checkpoint published by this step.")
    metrics: dict[str, float] = Field(
        description="TRL/verl-style metrics: `reward/mean`, `reward_std`, `frac_reward_zero_std`, `loss`, "
        "`grad_norm`, `clip_ratio` (+ `/low_mean`, `/high_mean`), `entropy`, `kl` (when beta > 0), `ppo_kl`, "
        "`response_length/mean`, `tokens_per_s`, `policy_version`, ...",
        examples=[{"reward/mean": 0.55, "reward_std": 0.42, "loss": 0.013, "grad_norm": 0.84, "clip_ratio": 0.02,
                   "tokens_per_s": 5120.0, "policy_version": 4.0}],
    )
