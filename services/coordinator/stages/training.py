"""Fine-tuning through the trainer: submit an SFT job (idempotent on its id), follow its events, load the result."""

from __future__ import annotations

import json
import time

from services.coordinator.context import RunContext
from shared.fsutil import write_text_atomic
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.training import DatasetSpec, JobEvent, JobRequest, SFTHyperparameters
from shared.trainer_jobs import describe_progress

PROGRESS_EVERY_S = 1.0


def write_rows(ctx: RunContext, name: str, rows: list[dict]) -> str:
    """Write a messages JSONL dataset into the run folder (atomically); its path."""
    path = ctx.run_dir / "datasets" / f"{name}.jsonl"
    return str(write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows)))


def with_run_seed(ctx: RunContext, hyperparameters: SFTHyperparameters) -> SFTHyperparameters:
    """The stage's SFT hyperparameters with the trainer seed offset by the run's task seed, so runs of different
    seeds (an experiment's) also differ in data order, packing and LoRA initialisation, not only in their tasks.
    The configured `seed` stays an offset: 0 (the default) gives seed N's run trainer seed N."""
    seed = (hyperparameters.seed + ctx.config.tasks.seed) % 2**32
    return hyperparameters.model_copy(update={"seed": seed})


def with_run_trackers(ctx: RunContext, hyperparameters):
    """The stage's hyperparameters with the run's `report_to` trackers added (SFT and GRPO alike)."""
    wanted = list(dict.fromkeys([*hyperparameters.report_to, *ctx.config.report_to]))
    return hyperparameters.model_copy(update={"report_to": wanted})


async def fine_tune(ctx: RunContext, *, stage: str, base: Checkpoint | str | None, rows: list[dict],
                    hyperparameters: SFTHyperparameters) -> Checkpoint:
    """Train `base` (a checkpoint the run published, or a trainer model reference; None: the built-in student) on
    `rows` (messages) and return the published checkpoint. Safe to call again after a crash: the job id is
    derived from the run and stage, so the trainer returns the job it already has."""
    job_id = f"{ctx.run_id}-{stage}"
    path = write_rows(ctx, stage, rows)
    hyperparameters = with_run_trackers(ctx, with_run_seed(ctx, hyperparameters))
    if isinstance(base, Checkpoint):
        base = base.path
    request = JobRequest(base=base, dataset=DatasetSpec(path=path), hyperparameters=hyperparameters,
                         output_name=job_id, job_id=job_id)
    job = await ctx.services.trainer.create_job(request)
    ctx.log("%s: SFT job %s on %d conversations (%s)", stage, job.id, len(rows), job.state.value)
    last_report = 0.0

    async def report(event: JobEvent) -> None:
        # The trainer reports every step (and replays them all when a retried stage follows the job again):
        # the run's log keeps about one a second, and the last.
        nonlocal last_report
        last = event.step == event.total_steps
        if event.type != "progress" or (time.monotonic() - last_report < PROGRESS_EVERY_S and not last):
            return
        last_report = time.monotonic()
        detail, metrics = describe_progress(event), event.metrics or {}
        await ctx.store.update_stage(ctx.run_id, stage, detail=detail)
        await ctx.store.event(ctx.run_id, "progress", detail, stage=stage, data={
            "job_id": job_id, "step": event.step, "total_steps": event.total_steps, "loss": metrics.get("loss"),
            "tokens_per_s": metrics.get("tokens_per_s"), "eta_s": event.eta_s})

    job = await ctx.services.trainer.await_job(job_id, on_event=report)
    # What each arm cost in training, for comparisons at equal optimizer steps.
    await ctx.store.set_counters(ctx.run_id, **{f"{stage}_optimizer_steps": int(job.total_steps or job.step),
                                                f"{stage}_train_rows": len(rows)})
    await ctx.store.event(ctx.run_id, "log", f"{stage}: published {job.checkpoint.reference}",
                          stage=stage, data={"checkpoint": job.checkpoint.model_dump(), "loss": job.metrics.loss})
    return job.checkpoint
