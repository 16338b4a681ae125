"""Coordinator configuration: how many stage workers it supervises and how items are timed out."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import Settings


class CoordinatorConfig(BaseSettings):
    """Read from `SCORE_COORDINATOR_<NAME>` environment variables; the shared settings from `SCORE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SCORE_COORDINATOR_", extra="ignore", env_ignore_empty=True)

    workers: int = Field(default=2, ge=0, le=64,
                         description="Stage worker processes to run and supervise (0: run them elsewhere).")
    worker_concurrency: int = Field(default=32, ge=1, le=1024, description="Items one worker processes at once.")
    visibility_ms: int = Field(
        default=60_000, ge=500,
        description="An item whose worker shows no sign of life for this long is handed to another worker.",
    )
    restart_backoff_s: float = Field(default=1.0, gt=0, description="First delay before restarting a dead worker.")
    settings: Settings = Field(default_factory=Settings, description="Shared settings (SCORE_HOME, Redis, token, ...).",
                               exclude=True)

    @model_validator(mode="after")
    def _needs_redis(self) -> "CoordinatorConfig":
        # Runs, queues and the workers' hand-offs all live in Redis: without it nothing can be accepted.
        if not self.settings.redis_url:
            raise ValueError("redis_url is unset: the coordinator needs Redis; set SCORE_REDIS_URL (or use "
                             "`score up`, which starts one)")
        return self
