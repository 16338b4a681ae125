"""Student service configuration: `SCORE_STUDENT_<NAME>` environment variables, overridden by CLI flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ModelServiceConfig


class StudentConfig(ModelServiceConfig):
    """How `score serve student` serves its policy. Flags (`--model`, `--engine`, ...) win over the environment."""

    model_config = SettingsConfigDict(env_prefix="SCORE_STUDENT_")

    engine: Literal["transformers", "openai"] = Field(
        default="transformers", description="`transformers`: in-process (CPU or CUDA). `openai`: a remote "
        "OpenAI-compatible server such as `vllm serve` (needs `base_url`).")
    weight_sync: Literal["lora", "score"] = Field(
        default="lora", description="How the `openai` engine takes new weights: `lora` loads each trainer "
        "checkpoint as a LoRA adapter (`/v1/load_lora_adapter`, vLLM); `score` posts the checkpoint path to a "
        "SCoRe student service's /v1/weights.")

    @field_validator("engine", mode="before")
    @classmethod
    def _not_the_teachers_engine(cls, value):
        if value == "expert":
            raise ValueError("expert is the teacher's scripted solver; the student takes transformers or openai")
        return value
