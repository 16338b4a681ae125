"""Training metrics to the experiment trackers a job asks for (`report_to`), beside the job's own events.

Today that is TensorBoard: event files under `SCORE_HOME/tensorboard/<output name>/<sft|rl>/`, one folder per
checkpoint series, so `tensorboard --logdir ~/.score/tensorboard` shows every run's SFT jobs and RL sessions side
by side. Scalars are named as TRL and verl name them (`train/loss`, `train/learning_rate`, `train/reward/mean`).
"""

from __future__ import annotations

import math
from pathlib import Path


def tensorboard_dir(home: Path, output_name: str, kind: str) -> Path:
    """Where the event files of one job (`kind` sft) or RL session (`kind` rl) go."""
    return Path(home) / "tensorboard" / output_name / kind


class MetricsTracker:
    """Writes numeric metrics per step to every integration in `report_to`; a no-op when it is empty."""

    def __init__(self, report_to: list[str], log_dir: Path) -> None:
        self._writer = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package (in the lock)

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict, *, prefix: str = "train") -> None:
        if self._writer is None:
            return
        for name, value in metrics.items():
            # Counts and rates only: None (not measured this step), bools and non-finite values are skipped.
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"{prefix}/{name}", value, step)
        self._writer.flush()  # a killed job keeps what it logged

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
