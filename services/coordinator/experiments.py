"""The experiments API's logic: one run per seed, one after another, then results from their per-task outcomes.

State lives in `SCORE_HOME/experiments/<id>/experiment.json` and in the runs themselves, so `advance` can be
called any number of times, from any coordinator process, after a restart: it starts the next seed's run when
the previous one succeeded, and writes the results once every run has. Runs go one at a time because every
run drives the one student service (each loads its own checkpoints into it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from pathlib import Path

from services.coordinator.experiment_results import build_results, summary, write_results
from services.coordinator.runs import RunManager
from shared.errors import NotFoundError
from shared.fsutil import write_text_atomic
from shared.schemas.experiments import ExperimentConfig, ExperimentInfo
from shared.schemas.runs import RunState

log = logging.getLogger("score.coordinator")
STATE_FILE = "experiment.json"
POLL_S = 2.0
EXPERIMENT_ID = re.compile(r"^exp-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def new_experiment_id() -> str:
    return f"exp-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


class ExperimentManager:
    def __init__(self, runs: RunManager, directory: Path, runs_dir: Path) -> None:
        self.runs, self.directory, self.runs_dir = runs, directory, runs_dir
        self._lock = asyncio.Lock()

    def _path(self, experiment_id: str) -> Path:
        return self.directory / experiment_id / STATE_FILE

    def _save(self, info: ExperimentInfo) -> None:
        write_text_atomic(self._path(info.id), info.model_dump_json(indent=2))

    def _load(self, experiment_id: str) -> ExperimentInfo:
        path = self._path(experiment_id)
        if not EXPERIMENT_ID.match(experiment_id) or not path.is_file():
            raise NotFoundError(f"no experiment {experiment_id!r}", param="experiment_id")
        return ExperimentInfo.model_validate_json(path.read_text())

    async def create(self, config: ExperimentConfig) -> ExperimentInfo:
        experiment_id = new_experiment_id()
        info = ExperimentInfo(id=experiment_id, name=config.name, state="running", created_at=time.time(),
                              artifacts=str(self.directory / experiment_id), config=config)
        # The first seed's run is created before anything is saved: a config whose tasks cannot fill the pools
        # is a 422 naming the field, and leaves nothing behind.
        run = await self.runs.create(config.run_config(config.seeds[0]))
        info.runs[str(config.seeds[0])] = run.id
        self._save(info)
        return info

    async def get(self, experiment_id: str) -> ExperimentInfo:
        return await self.advance(experiment_id)

    def ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted((p.parent.name for p in self.directory.glob(f"*/{STATE_FILE}")), reverse=True)

    async def advance(self, experiment_id: str) -> ExperimentInfo:
        """Move the experiment on as far as its runs allow (idempotent)."""
        async with self._lock:
            info = self._load(experiment_id)
            if info.state != "running":
                return info
            for seed in info.config.seeds:
                run_id = info.runs.get(str(seed))
                if run_id is None:
                    run = await self.runs.create(info.config.run_config(seed))
                    info.runs[str(seed)] = run.id
                    self._save(info)
                    return info
                run = await self.runs.get(run_id)
                if not run.state.terminal:
                    return info
                if run.state != RunState.succeeded:
                    info.state, info.error = "failed", f"run {run_id} (seed {seed}) {run.state.value}: {run.error}"
                    self._save(info)
                    return info
            metrics = {seed: json.loads((self.runs_dir / run_id / "metrics.json").read_text())
                       for seed, run_id in info.runs.items()}
            results = build_results(info.id, info.config.model_dump(mode="json"), metrics)
            await asyncio.to_thread(write_results, self.directory / info.id, results)
            info.state, info.summary = "succeeded", summary(results)
            self._save(info)
            return info

    async def results(self, experiment_id: str) -> Path:
        info = await self.advance(experiment_id)
        path = Path(info.artifacts) / "results.json"
        if info.state != "succeeded" or not path.is_file():
            raise NotFoundError(f"experiment {experiment_id} has no results yet ({info.state})", param="experiment_id")
        return path

    async def watch(self) -> None:
        """Advance every running experiment every few seconds (the coordinator's lifespan runs this)."""
        while True:
            for experiment_id in self.ids():
                try:
                    if self._load(experiment_id).state == "running":
                        await self.advance(experiment_id)
                except Exception:  # noqa: BLE001 - one broken experiment must not stop the others
                    log.exception("experiment %s: cannot advance", experiment_id)
            await asyncio.sleep(POLL_S)
