"""`GET/POST /v1/weights`: which policy version a model service serves."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.names import SAFE_NAME
from shared.schemas.agent import MAX_POLICY_VERSION
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.logprobs import TokenizerInfo


class WeightsInfo(BaseModel):
    policy_version: int = Field(
        description="Monotone version of the served weights (0 = the initial model).", examples=[3],
    )
    path: str = Field(
        description="Directory the weights were loaded from.", examples=["/data/score/checkpoints/student-sft/v2"],
    )
    model: str = Field(description="Served model name.", examples=["score-student"])
    tokenizer: TokenizerInfo | None = Field(
        default=None,
        description="The served tokenizer's identity; a teacher scoring this model's tokens (`POST /v1/logprobs`) "
        "must have the same fingerprint.",
    )


class LoadWeightsRequest(BaseModel):
    """Load a checkpoint without a restart. Give a `path`, or a checkpoint `name` and `version` under SCORE_HOME."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "student-sft", "version": 2}]})

    path: str | None = Field(
        default=None, description="A Hugging Face format checkpoint directory under SCORE_HOME (or a directory the "
        "operator allows with SCORE_ALLOWED_PATHS).",
        examples=["/data/score/checkpoints/student-sft/v2"],
    )
    name: str | None = Field(
        default=None, pattern=SAFE_NAME.pattern,
        description="Checkpoint name under SCORE_HOME/checkpoints/: 1-64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit.", examples=["student-sft"],
    )
    version: int | None = Field(
        default=None, ge=0, le=MAX_POLICY_VERSION,
        description="Checkpoint version; becomes the policy_version. Versions only grow: lower than the one "
        "served is a 409 (the same version is accepted again only for the same checkpoint).", examples=[2],
    )

    @model_validator(mode="after")
    def _one_source(self) -> "LoadWeightsRequest":
        if self.path is None and (self.name is None or self.version is None):
            raise ValueError("give `path`, or both `name` and `version`")
        return self

    @classmethod
    def serving(cls, checkpoint: Checkpoint, policy_version: int) -> "LoadWeightsRequest":
        """Load a published checkpoint as `policy_version`. By path, since a caller's policy versions (a run's
        grow across checkpoint series) need not be the checkpoint's own version, which `{name, version}` uses."""
        return cls(path=checkpoint.path, version=policy_version)
