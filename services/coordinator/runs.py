"""The runs API's logic: create (validated before anything is written), cancel, read, follow, export."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

from services.coordinator import pipeline
from services.coordinator.datasets import dataset
from services.coordinator.pools import FileRules, PoolError, draw_pools, save_pools
from services.coordinator.queue import StageQueue
from services.coordinator.records import records_of
from services.coordinator.store import IllegalTransition, RunNotFound, RunStore
from shared.errors import ConflictError, NotFoundError, UnprocessableError
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunEvent, RunInfo, RunState
from shared.schemas.trajectories import TrajectoryRecord
from shared.settings import Settings, is_configured_service_url

RECORD_STAGES = ("bc_init", "mps", "baseline", "baseline_tokens")


def check_service_urls(config: RunConfig, settings: Settings) -> None:
    """With an API token set, a run may only name the configured service URLs: the coordinator sends the
    token with every call, so another URL would receive it (and turn the coordinator into a proxy)."""
    if settings.api_token is None:
        return
    for field in ("student_url", "teacher_url", "trainer_url"):
        url = getattr(config.services, field)
        if url is not None and not is_configured_service_url(url, settings):
            raise UnprocessableError(
                f"services.{field} {url!r} is not one of the configured service URLs (SCORE_STUDENT_URL, "
                "SCORE_TEACHER_URL, SCORE_TRAINER_URL); with SCORE_API_TOKEN set, runs cannot redirect the "
                "coordinator's calls (and its token) elsewhere. Leave it out, or change the setting.",
                param=f"body.services.{field}")


def new_run_id() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


class RunManager:
    def __init__(self, store: RunStore, queue: StageQueue, runs_dir: Path, settings: Settings | None = None) -> None:
        self.store, self.queue, self.runs_dir = store, queue, runs_dir
        self.settings = settings

    async def create(self, config: RunConfig) -> RunInfo:
        """Validate the tasks, write the pools, then register and start the run; a bad config leaves nothing."""
        rules = None
        if self.settings is not None:
            check_service_urls(config, self.settings)
            rules = FileRules(roots=self.settings.path_roots, max_bytes=self.settings.max_task_file_bytes)
        try:
            pools = await asyncio.to_thread(draw_pools, config.tasks, rules)
        except PoolError as exc:
            raise UnprocessableError(str(exc), param=exc.field) from exc
        run_id = new_run_id()
        run_dir = self.runs_dir / run_id
        try:
            save_pools(pools, run_dir)
            await self.store.create(run_id, config)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        await self.store.event(run_id, "state", "run queued", data={
            "state": "queued", "pools": {name: len(getattr(pools, name)) for name in ("bc_init", "train", "rl", "eval")}})
        await pipeline.start(self.queue, run_id)
        return await self.store.info(run_id)

    async def get(self, run_id: str) -> RunInfo:
        try:
            return await self.store.info(run_id)
        except RunNotFound:
            raise NotFoundError(f"no run {run_id!r}", param="run_id") from None

    async def list(self) -> list[RunInfo]:
        return [await self.store.info(run_id) for run_id in await self.store.list_ids()]

    async def cancel(self, run_id: str) -> RunInfo:
        run = await self.get(run_id)
        if run.state.terminal:
            raise ConflictError(f"run {run_id} already ended ({run.state.value}); only queued or running runs can be "
                                "cancelled")
        try:
            await self.store.transition(run_id, RunState.cancelled)
        except IllegalTransition as exc:
            raise ConflictError(str(exc)) from None
        return await self.store.info(run_id)

    async def records(self, run_id: str, *, stage: str | None = None, outcome: str | None = None) -> list[TrajectoryRecord]:
        await self.get(run_id)
        records = []
        for name in RECORD_STAGES:
            if stage is None or stage == name:
                records += records_of(await self.store.results(run_id, name))
        return [r for r in records if outcome is None or r.outcome == outcome]

    async def dataset_records(self, run_id: str, name: str) -> list[TrajectoryRecord]:
        """The records behind a dataset: what its stage trained on (`datasets.py`, shared with the stage)."""
        await self.get(run_id)
        return await dataset(name, self.store, run_id, await self.store.config(run_id))

    async def export(self, run_id: str, name: str, fmt: str) -> Path:
        """Write the dataset in `fmt` under the run folder; its path."""
        from services.coordinator.exports import write_export

        await self.get(run_id)  # 404 for an unknown run: `store.config` below would raise a bare KeyError
        if fmt == "verl" and name != "rl":
            raise UnprocessableError("the verl format holds RL prefixes with chosen/rejected steps: use dataset `rl`",
                                     param="format")
        records = await self.dataset_records(run_id, name)
        suffix = "parquet" if fmt == "verl" else "jsonl"
        path = self.runs_dir / run_id / "exports" / f"{name}.{fmt}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return await asyncio.to_thread(write_export, records, fmt, path)

    async def events(self, run_id: str, after: str = "0", *, block_ms: int | None = None) -> list[RunEvent]:
        await self.get(run_id)
        return await self.store.read_events(run_id, after, block_ms=block_ms)
