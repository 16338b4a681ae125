"""Trainer service configuration (CLI flags map onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.settings import Settings


@dataclass
class TrainerConfig:
    device: str | None = None          # "cpu" / "cuda" for training jobs; default: cuda when available
    max_running_jobs: int = 1          # jobs training at once; more wait in `queued` (one device, one job)
    poll_interval_s: float = 0.5       # how often the service reads its children's progress files
    settings: Settings = field(default_factory=Settings)

    @property
    def jobs_dir(self):
        return self.settings.home / "trainer" / "jobs"
