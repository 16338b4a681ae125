"""Coordinator configuration: how many stage workers it supervises and how items are timed out."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoordinatorConfig(BaseSettings):
    """Read from `SCORE_COORDINATOR_<NAME>` environment variables."""

    model_config = SettingsConfigDict(env_prefix="SCORE_COORDINATOR_", extra="ignore", env_ignore_empty=True)

    workers: int = Field(default=2, ge=0, le=64,
                         description="Stage worker processes to run and supervise (0: run them elsewhere).")
    worker_concurrency: int = Field(default=32, ge=1, le=1024, description="Items one worker processes at once.")
    visibility_ms: int = Field(
        default=60_000, ge=500,
        description="An item whose worker shows no sign of life for this long is handed to another worker.",
    )
    restart_backoff_s: float = Field(default=1.0, gt=0, description="First delay before restarting a dead worker.")
