"""Student service configuration: `SCORE_STUDENT_<NAME>` environment variables, overridden by CLI flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import Settings
from shared.tools.sandbox import SandboxLimits


class StudentConfig(BaseSettings):
    """How `score serve student` serves its policy. Flags (`--model`, `--engine`, ...) win over the environment."""

    model_config = SettingsConfigDict(env_prefix="SCORE_STUDENT_", extra="ignore", env_ignore_empty=True,
                                      protected_namespaces=())

    model: str | None = Field(
        default=None, description="Checkpoint directory or name (`name`, `name/vN`); unset: the built-in tiny "
        "student, built on first use under SCORE_HOME.")
    engine: Literal["transformers", "openai"] = Field(
        default="transformers", description="`transformers`: in-process (CPU or CUDA). `openai`: a remote "
        "OpenAI-compatible server such as `vllm serve` (needs `base_url`).")
    base_url: str | None = Field(
        default=None, description="The OpenAI-compatible server for engine `openai`, e.g. http://vllm-student:8000/v1.")
    served_model_name: str | None = Field(
        default=None, description="Name in /v1/models (and the base model's name on the remote server); default "
        "from the checkpoint directory.")
    device: str | None = Field(default=None, description="`cpu` or `cuda`; unset: cuda when available.")
    max_batch_size: int = Field(default=64, ge=1, description="Most requests gathered into one batched generation.")
    max_concurrent_episodes: int = Field(
        default=64, ge=1, description="Live sandboxes per service (one interpreter process each).")
    weight_sync: Literal["lora", "score"] = Field(
        default="lora", description="How the `openai` engine takes new weights: `lora` loads each trainer "
        "checkpoint as a LoRA adapter (`/v1/load_lora_adapter`, vLLM); `score` posts the checkpoint path to a "
        "SCoRe student service's /v1/weights.")
    search_corpus: str | None = Field(
        default=None, description="JSONL file of {id, title, text} for the `search` tool; unset: the built-in "
        "knowledge base.")
    sandbox: SandboxLimits = Field(
        default_factory=SandboxLimits, description="Limits of the sandboxed interpreter (JSON object).")
    settings: Settings = Field(default_factory=Settings, description="Shared settings (SCORE_HOME, token, ...).",
                               exclude=True)
