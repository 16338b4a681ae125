"""`POST /v1/rollouts`: agent episodes with the sandboxed tools."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.schemas.agent import MAX_TRAJECTORY_STEPS, Episode, Step, Task
from shared.schemas.sampling import SamplingParams

MAX_ROLLOUT_EPISODES = 512  # items x n per request; larger batches should be split by the caller
EXAMPLE_QUESTION = "Take the number 747, then add 822, then subtract 580. What number do you get?"


class RolloutItem(BaseModel):
    """One task to roll out, optionally from a trusted prefix."""

    model_config = ConfigDict(extra="forbid")

    task: Task = Field(description="The task; `true_answer` is not needed to generate.")
    prefix_steps: list[Step] = Field(
        default_factory=list, max_length=MAX_TRAJECTORY_STEPS,
        description="Trusted beginning of the episode: its code is re-executed in the episode's fresh sandbox "
        f"(observations recomputed), then the model continues. The first step, if any, must be the `plan`; at "
        f"most {MAX_TRAJECTORY_STEPS} steps.",
    )

    @model_validator(mode="after")
    def _prefix_shape(self) -> "RolloutItem":
        for index, step in enumerate(self.prefix_steps):
            if index == 0 and step.kind != "plan":
                raise ValueError("prefix_steps[0] must be the `plan` step")
            if index > 0 and step.kind != "act":
                raise ValueError(f"prefix_steps[{index}] must be an `act` step")
            if step.kind == "act" and not (step.code or "").strip() and step.parse_error is None:
                raise ValueError(
                    f"prefix_steps[{index}].code must not be empty for an `act` step (unless parse_error says why)"
                )
        return self


class RolloutRequest(BaseModel):
    """Run `n` agent episodes for each item."""

    # Small on purpose: one short episode, so sending the example costs little.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "items": [{
            "task": {"id": "arith-dc23fdeb16", "question": EXAMPLE_QUESTION, "true_answer": 989},
            "prefix_steps": [{"kind": "plan", "thought": "There are 2 operations to apply to 747: add 822, subtract "
                              "580. I will apply them one at a time in Python and print each intermediate result."}],
        }],
        "n": 1, "max_turns": 2, "sampling": {"temperature": 0.8, "max_tokens": 64, "seed": 7},
    }]})

    items: list[RolloutItem] = Field(min_length=1, description="Tasks to roll out, each with an optional prefix.")
    n: int = Field(default=1, ge=1, le=64, description="Samples per item (a GRPO group).", examples=[1])
    max_turns: int = Field(
        default=8, ge=0, le=32,
        description="Model turns after the prefix (the plan counts as a turn). 0 replays the prefix only.",
        examples=[2],
    )
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="Sampling for every model turn.")

    @model_validator(mode="after")
    def _bounded(self) -> "RolloutRequest":
        total = len(self.items) * self.n
        if total > MAX_ROLLOUT_EPISODES:
            raise ValueError(f"items x n = {total} episodes exceeds the limit of {MAX_ROLLOUT_EPISODES}; split the request")
        return self


class RolloutResponse(BaseModel):
    """Episodes in item order, `n` per item."""

    episodes: list[Episode] = Field(description="Episodes in item order, `n` consecutive ones per item.")
    policy_version: int = Field(
        description="The weights version that produced every episode of this response.", examples=[3],
    )
