"""Teacher service configuration: `SCORE_TEACHER_<NAME>` environment variables, overridden by CLI flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import ModelServiceConfig

EngineKind = Literal["expert", "transformers", "openai"]


class TeacherConfig(ModelServiceConfig):
    """How `score serve teacher` corrects, judges and solves. Flags (`--engine`, `--model`, ...) win over the
    environment."""

    model_config = SettingsConfigDict(env_prefix="SCORE_TEACHER_")

    engine: EngineKind = Field(
        default="transformers", description="`transformers`: a model in-process (the built-in tiny teacher by "
        "default); `openai`: a remote OpenAI-compatible server (needs `base_url`); `expert`: the built-in suite's "
        "scripted solver, no model (so it refuses `model`, `base_url`, `served_model_name` and `device`).")
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
    verify_window: int = Field(default=1, ge=0, le=64, description="`verify`: act-step prefixes of one trajectory "
                               "proposed per round, in order. The walk stops at the first critical error, so "
                               "prefixes after it are never proposed or paid for; a wider window makes fewer, larger "
                               "calls. 0: every prefix in one call (fewest calls, most teacher tokens).")
    judge_attempts: int = Field(default=3, ge=1, description="`judge`: tries per prompt before falling back to hard.")
    retry_temperature: float = Field(default=0.7, ge=0, description="`judge` retries sample at least this hot, or "
                                     "greedy decoding would repeat itself.")
    max_concurrent_sandboxes: int = Field(default=8, ge=1, description="Sandboxes replaying or executing at once "
                                          "(comparisons, judge, expert).")
    judgement_cache_size: int = Field(default=4096, ge=0, description="Judgements remembered by content hash (LRU).")

    @model_validator(mode="after")
    def _expert_runs_no_model(self) -> "TeacherConfig":
        if self.engine == "expert":
            for name in ("model", "base_url", "served_model_name", "device"):
                if getattr(self, name):
                    raise ValueError(f"{name} (SCORE_TEACHER_{name.upper()}, --{name.replace('_', '-')}) does not "
                                     "apply to engine expert (the scripted solver of the built-in suite runs no model)")
        return self
