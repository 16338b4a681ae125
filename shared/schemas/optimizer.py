"""AdamW settings shared by SFT jobs and GRPO sessions: one definition, so both optimize the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

# The bounds of a learning rate; its default is each method's own (SFT and GRPO want rates orders apart).
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]


class OptimizerSettings(BaseModel):
    """AdamW and gradient clipping. Models that include it declare `learning_rate` again with their default."""

    learning_rate: LearningRate = Field(description="Peak AdamW learning rate.", examples=[0.001])
    weight_decay: float = Field(
        default=0.0, ge=0.0, le=10.0,
        description="AdamW decoupled weight decay, on every trained tensor but biases and norm weights (the "
        "Hugging Face Trainer's rule). At 0 (TRL's default) a tensor whose gradient is zero does not move, so a "
        "GRPO step whose advantages are all zero changes nothing.",
        examples=[0.01],
    )
    adam_beta1: float = Field(default=0.9, ge=0.0, lt=1.0, description="AdamW first-moment decay.", examples=[0.9])
    adam_beta2: float = Field(default=0.999, ge=0.0, lt=1.0, description="AdamW second-moment decay.", examples=[0.999])
    adam_epsilon: float = Field(default=1e-8, gt=0.0, le=1.0, description="AdamW denominator epsilon.",
                                examples=[1e-08])
    max_grad_norm: float | None = Field(
        default=1.0, gt=0.0, le=1e6,
        description="Clip the global gradient norm to this value before each step (None: no clipping).",
        examples=[1.0],
    )
