"""What each training stage trains on, as trajectory records: one function per dataset.

The stage that trains calls it (and turns the records into rows with `records.rows_for_sft`), and so do exports
(`GET /v1/runs/{id}/datasets/{name}`), so an exported dataset is, row for row, the file the trainer trained on.
"""

from __future__ import annotations

from typing import Literal

from services.coordinator.records import gives_rl_prefix, keep_share, records_of
from services.coordinator.store import RunStore
from shared.schemas.run_config import RunConfig
from shared.schemas.trajectories import TrajectoryRecord

DatasetName = Literal["bc_init", "sft", "baseline", "rl"]
DATASETS: tuple[str, ...] = ("bc_init", "sft", "baseline", "rl")


async def stage_records(store: RunStore, run_id: str, stage: str) -> list[TrajectoryRecord]:
    return records_of(await store.results(run_id, stage))


def selection_salt(config: RunConfig) -> str:
    """What the hashed shares below are keyed by: the training seed, not the run id, so two runs of one config
    train on the same rows in the same order (a share keyed by run id made SFT rows, and so the trained
    student, differ between such runs), and a redelivered item or a restart keeps the same ones."""
    return f"seed-{config.tasks.seed}"


def sft_records(records, share: float, salt: str, *, cold_start=(), replay: float = 0.0) -> list[TrajectoryRecord]:
    """Repaired trajectories, a deterministic `share` of the self-solved ones (train pool only), and a `replay`
    share of the correct cold-start trajectories."""
    mentored = [r for r in records if r.pool == "train" and (
        r.outcome == "repaired" or (r.outcome == "self_solved" and keep_share(r.task.id, share, salt)))]
    return mentored + replayed(cold_start, replay, salt)


def replayed(cold_start, share: float, salt: str) -> list[TrajectoryRecord]:
    """The correct cold-start trajectories SCoRe-SFT replays (its `replay_bc_init` share); reference arms from the
    cold-start checkpoint replay the same ones, so they differ from SCoRe only in their new data."""
    return [r for r in cold_start if r.correct and keep_share(r.task.id, share, salt + "/replay")]


def rl_prefixes(records: list[TrajectoryRecord]) -> list[TrajectoryRecord]:
    """RL-pool trajectories the teacher corrected at an act step: each gives (prefix, chosen step, rejected step)."""
    return sorted(filter(gives_rl_prefix, records), key=lambda r: r.task.id)


async def bc_init_dataset(store: RunStore, run_id: str, config: RunConfig) -> list[TrajectoryRecord]:
    return await stage_records(store, run_id, "bc_init")


async def sft_dataset(store: RunStore, run_id: str, config: RunConfig) -> list[TrajectoryRecord]:
    return sft_records(await stage_records(store, run_id, "mps"), config.mps.self_solved_share, selection_salt(config),
                       cold_start=await stage_records(store, run_id, "bc_init"), replay=config.sft.replay_bc_init)


async def baseline_dataset(store: RunStore, run_id: str, config: RunConfig) -> list[TrajectoryRecord]:
    """From the cold-start checkpoint: the teacher's trajectories of SCoRe's tasks plus SCoRe-SFT's replayed share.
    From the base student: every cold-start trajectory, then those."""
    cold = await stage_records(store, run_id, "bc_init")
    new = await stage_records(store, run_id, "baseline")
    if config.baseline.start == "cold_start":
        return new + replayed(cold, config.sft.replay_bc_init, selection_salt(config))
    return cold + new


async def rl_dataset(store: RunStore, run_id: str, config: RunConfig) -> list[TrajectoryRecord]:
    return rl_prefixes(await stage_records(store, run_id, "mps"))


_BUILDERS = {"bc_init": bc_init_dataset, "sft": sft_dataset, "baseline": baseline_dataset, "rl": rl_dataset}


async def dataset(name: str, store: RunStore, run_id: str, config: RunConfig) -> list[TrajectoryRecord]:
    """The records of dataset `name` (one of `DATASETS`)."""
    return await _BUILDERS[name](store, run_id, config)
