"""A published checkpoint version, as every service names it: `{"name", "version", "path"}`.

The trainer returns it for a finished SFT job and for each GRPO step, the coordinator keeps it among a run's
pointers, and the student is given it to load. The checkpoint store's index rows (`shared.checkpoints`) are
this plus lineage.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from shared.names import SAFE_NAME


class Checkpoint(BaseModel):
    """Where a published checkpoint version lives."""

    name: str = Field(
        pattern=SAFE_NAME.pattern, description="Checkpoint series under SCORE_HOME/checkpoints/.",
        examples=["student-sft"],
    )
    version: int = Field(
        ge=1, description="Version within the series (1, 2, ...); the student's `POST /v1/weights {name, version}` "
        "loads it.", examples=[2],
    )
    path: str = Field(
        description="Directory of the Hugging Face format checkpoint (or LoRA adapter).",
        examples=["/data/score/checkpoints/student-sft/v2"],
    )

    @property
    def reference(self) -> str:
        """`name/vN`: how a model reference (a job's or session's `base`) names this version."""
        return f"{self.name}/v{self.version}"
