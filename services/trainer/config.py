"""Trainer service configuration: `SCORE_TRAINER_<NAME>` environment variables, overridden by CLI flags."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.settings import Settings


class TrainerConfig(BaseSettings):
    """How `score serve trainer` runs jobs. Each job names its own base checkpoint in the request."""

    model_config = SettingsConfigDict(env_prefix="SCORE_TRAINER_", extra="ignore", env_ignore_empty=True)

    device: str | None = Field(
        default=None, description="`cpu` or `cuda` for training jobs and GRPO steps; unset: cuda when available.")
    max_running_jobs: int = Field(
        default=1, ge=0, description="SFT jobs training at once; more wait in `queued` (one device, one job).")
    warm_start: bool = Field(
        default=True, description="Fork single-process SFT jobs from a launcher process that has imported torch "
        "and the training code once (started with the first job), instead of a fresh Python process per job, "
        "which spends seconds on imports first. Off, or when the launcher cannot serve: a fresh process.")
    poll_interval_s: float = Field(
        default=0.5, gt=0, description="How often the service reads its job processes' progress files.")
    settings: Settings = Field(default_factory=Settings, description="Shared settings (SCORE_HOME, token, ...).",
                               exclude=True)

    @property
    def jobs_dir(self):
        return self.settings.home / "trainer" / "jobs"
