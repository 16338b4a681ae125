"""Teacher service configuration: `SCORE_TEACHER_<NAME>` environment variables, overridden by CLI flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import Settings
from shared.tools.sandbox import SandboxLimits

EngineKind = Literal["expert", "transformers", "openai"]


class TeacherConfig(BaseSettings):
    """How `score serve teacher` corrects, judges and solves. Flags (`--engine`, `--model`, ...) win over the
    environment."""

    model_config = SettingsConfigDict(env_prefix="SCORE_TEACHER_", extra="ignore", env_ignore_empty=True,
                                      protected_namespaces=())

    engine: EngineKind = Field(
        default="transformers", description="`transformers`: a model in-process (the built-in tiny teacher by "
        "default); `openai`: a remote OpenAI-compatible server (needs `base_url`); `expert`: the built-in suite's "
        "scripted solver, no model.")
    model: str | None = Field(
        default=None, description="Checkpoint directory or name for the model engines; unset: the built-in tiny "
        "teacher.")
    base_url: str | None = Field(
        default=None, description="The OpenAI-compatible server for engine `openai`, e.g. http://vllm-teacher:8000/v1.")
    served_model_name: str | None = Field(
        default=None, description="Model name on that server; unset: its first model.")
    device: str | None = Field(default=None, description="`cpu` or `cuda` for engine `transformers`.")
    max_batch_size: int = Field(default=64, ge=1, description="Most generations batched together (transformers).")
    temperature: float = Field(
        default=0.0, ge=0, description="Teacher sampling temperature: greedy by default, so corrections are "
        "reproducible.")
    max_step_tokens: int = Field(default=256, ge=1, description="Token budget of one agent turn (a proposed or "
                                 "corrected step).")
    max_judge_tokens: int = Field(default=384, ge=1, description="Token budget of the judge's JSON verdict.")
    rollout_max_turns: int = Field(default=8, ge=1, description="Turns a full teacher rollout may take after the "
                                   "corrected step.")
    max_rollouts_per_item: int = Field(default=4, ge=1, description="`verify`: divergent prefixes tried before a "
                                       "trajectory is called hard.")
    judge_attempts: int = Field(default=3, ge=1, description="`judge`: tries per prompt before falling back to hard.")
    retry_temperature: float = Field(default=0.7, ge=0, description="`judge` retries sample at least this hot, or "
                                     "greedy decoding would repeat itself.")
    max_concurrent_sandboxes: int = Field(default=8, ge=1, description="Sandboxes replaying or executing at once "
                                          "(comparisons, judge, expert).")
    max_concurrent_episodes: int = Field(default=64, ge=1, description="Model turns and rollouts in flight (one "
                                         "sandbox each).")
    judgement_cache_size: int = Field(default=4096, ge=0, description="Judgements remembered by content hash (LRU).")
    search_corpus: str | None = Field(
        default=None, description="JSONL file of {id, title, text} for the `search` tool; unset: the built-in "
        "knowledge base.")
    sandbox: SandboxLimits = Field(
        default_factory=SandboxLimits, description="Limits of the sandboxed interpreter (JSON object).")
    settings: Settings = Field(default_factory=Settings, description="Shared settings (SCORE_HOME, token, ...).",
                               exclude=True)
