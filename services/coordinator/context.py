"""What a stage handler sees of its run: config, pools, run store, service clients, artifacts folder."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from services.coordinator.batching import MicroBatcher
from services.coordinator.clients import Services
from services.coordinator.pools import Pools, load_pools
from services.coordinator.queue import StageQueue
from services.coordinator.store import RunStore
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunPointers, ServedCheckpoint
from shared.schemas.teacher import Correction, CorrectionItem
from shared.settings import Settings, is_configured_service_url

logger = logging.getLogger("score.coordinator")


# Policies trained only to be compared with SCoRe: the run never ends on them.
REFERENCE_ARMS = ("baseline", "baseline_tokens", "control", "opd", "score_opd")


@dataclass
class RunContext:
    run_id: str
    config: RunConfig
    store: RunStore
    queue: StageQueue
    services: Services
    run_dir: Path
    limit: asyncio.Semaphore | None = None  # the run's `concurrency`: items of this run in progress at once
    checkpoints_dir: Path | None = None  # SCORE_HOME/checkpoints: evaluations are added to the cards under it

    def __post_init__(self) -> None:
        if self.limit is None:
            self.limit = asyncio.Semaphore(self.config.concurrency)

    @cached_property
    def pools(self) -> Pools:
        return load_pools(self.run_dir)

    @cached_property
    def corrections(self) -> MicroBatcher[CorrectionItem, Correction]:
        """The teacher's corrections for this run's concurrent items, gathered into batched requests."""
        params = self.config.mps

        async def call(items: list[CorrectionItem]) -> list[Correction]:
            return (await self.services.teacher.corrections(items, params.strategy)).corrections

        return MicroBatcher(call, max_size=params.correction_batch, max_wait_s=params.correction_wait_ms / 1000)

    def log(self, message: str, *args) -> None:
        logger.info("[run %s] " + message, self.run_id, *args)

    async def use_student(self, checkpoint: Checkpoint, *, label: str, version: int | None = None) -> int:
        """Load a checkpoint into the student and remember it, so a restarted student is brought back to it.

        Without `version`, the run's next policy version: versions only grow within a run, whatever series
        the checkpoint was published in, so every sample's `policy_version` orders it in time. The student's
        versions only grow too (it refuses a lower one), so after another run it starts above that run's."""
        if version is None:
            run_next = ((await self.store.pointers(self.run_id)).policy_version or 0) + 1
            version = max(run_next, (await self.services.student.weights()).policy_version + 1)
        info = await self.services.student.load(checkpoint, policy_version=version)
        served = ServedCheckpoint(checkpoint=checkpoint, policy_version=version, label=label)
        # The SCoRe policy the run ends on moves with it; reference arms are only evaluated.
        score = {} if label.split()[0] in REFERENCE_ARMS else {"score_checkpoint": served}
        await self.store.set_pointers(self.run_id, RunPointers(
            student_checkpoint=served, policy_version=info.policy_version, **score))
        await self.store.event(self.run_id, "log", f"student now serves {label} (policy version {version})",
                               data={"path": checkpoint.path, "version": version, "label": label})
        return version

    async def ensure_student(self) -> int | None:
        """Make sure the student serves this run's current checkpoint (it may have restarted); its version."""
        expected = (await self.store.pointers(self.run_id)).student_checkpoint
        if expected is None:
            return (await self.services.student.weights()).policy_version
        current = await self.services.student.weights()
        if current.path != expected.checkpoint.path or current.policy_version != expected.policy_version:
            self.log("student serves %s v%s, expected %s v%s: reloading", current.path, current.policy_version,
                     expected.checkpoint.path, expected.policy_version)
            await self.services.student.load(expected.checkpoint, policy_version=expected.policy_version)
        return expected.policy_version


def services_for(config: RunConfig, settings: Settings) -> Services:
    """Clients of the run's model services. The API token goes only to the configured service URLs: run
    creation refuses others while a token is set, and a URL that is not configured never gets the token."""
    urls = {
        "student_url": config.services.student_url or settings.student_url,
        "teacher_url": config.services.teacher_url or settings.teacher_url,
        "trainer_url": config.services.trainer_url or settings.trainer_url,
    }
    tokens = {name: settings.api_token if is_configured_service_url(url, settings) else None
              for name, url in urls.items()}
    return Services(**urls, tokens=tokens)
