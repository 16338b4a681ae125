"""The trainer service's app factory and lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import Gauge

from shared.checkpoints import CheckpointStore
from shared.observability import ServiceMetrics, mount_service, service_app
from shared.schemas.training import JobInfo, JobState
from shared.settings import given_flags
from services.trainer.sft.api import jobs_router, ops_router
from services.trainer.config import TrainerConfig
from services.trainer.sft.jobs import JobManager
from services.trainer.grpo.sessions import RLSessions
from services.trainer.grpo.api import rl_router

log = logging.getLogger("score.trainer")


def app_from_args(args, settings) -> FastAPI:
    """The app `score serve trainer` runs, from its command-line flags."""
    for flag in ("model", "engine", "base_url", "served_model_name"):
        if getattr(args, flag, None):
            raise ValueError(
                f"--{flag.replace('_', '-')} does not apply to the trainer: each job names its base checkpoint "
                "in the request (`base`)"
            )
    return create_app(TrainerConfig(settings=settings, **given_flags(args, "device")))


SFT_GAUGES = {
    "step": "Optimizer steps done by the SFT job (running ones, else the last one to change).",
    "total_steps": "Optimizer steps the SFT job will take in all.",
    "loss": "Mean loss per assistant token over the SFT job's last logged step.",
    "tokens_per_second": "Trained-on tokens per second of the SFT job's last logged step, all processes.",
    "eta_seconds": "Estimated seconds until the SFT job finishes.",
}


def shown_jobs(jobs: JobManager) -> list[JobInfo]:
    """The jobs /metrics describes: those running, else the one updated last (one series per job keeps the
    label set small however many jobs the service has seen)."""
    infos = [job.info for job in jobs.jobs.values()]
    running = [info for info in infos if info.state == JobState.running]
    return running or sorted(infos, key=lambda info: info.updated_at)[-1:]


def sft_values(info: JobInfo) -> dict[str, float]:
    values = {"step": info.step, "total_steps": info.total_steps, "loss": info.metrics.loss,
              "tokens_per_second": info.metrics.tokens_per_s, "eta_seconds": info.eta_s}
    return {name: float(value) for name, value in values.items() if value is not None}


def create_app(config: TrainerConfig | None = None) -> FastAPI:
    config = config or TrainerConfig()
    metrics = ServiceMetrics("trainer")
    jobs_gauge = Gauge("score_trainer_jobs", "Trainer jobs by state.", ["service", "state"], registry=metrics.registry)
    sft = {name: Gauge(f"score_sft_job_{name}", doc, ["service", "job"], registry=metrics.registry)
           for name, doc in SFT_GAUGES.items()}
    rl_gauge = Gauge(
        "score_rl_session", "RL sessions: policy version, steps, latest reward/mean, loss, grad_norm, tokens_per_s.",
        ["service", "session", "value"], registry=metrics.registry,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = config.settings
        app.state.store = CheckpointStore(config.settings.checkpoints_dir)
        app.state.rl = RLSessions(settings=config.settings, store=app.state.store, device=config.device)
        jobs = JobManager(
            jobs_dir=config.jobs_dir, home=config.settings.home, checkpoints_dir=config.settings.checkpoints_dir,
            max_running=config.max_running_jobs, poll_interval_s=config.poll_interval_s, device=config.device,
            roots=config.settings.path_roots, max_file_bytes=config.settings.max_task_file_bytes,
            warm_start=config.warm_start,
        )
        await jobs.start()
        app.state.jobs = jobs
        log.info("trainer ready home=%s jobs=%d", config.settings.home, len(jobs.jobs))
        try:
            yield
        finally:
            await jobs.close()

    app = service_app(
        title="SCoRe trainer service",
        description="Supervised fine-tuning jobs (loss on assistant turns only, packed sequences, resumable, "
        "single process or torchrun) and GRPO steps; every result is a versioned Hugging Face checkpoint.",
        lifespan=lifespan,
    )

    def render_metrics():
        jobs = getattr(app.state, "jobs", None)
        if jobs is not None:
            for state, count in jobs.counts().items():
                jobs_gauge.labels("trainer", state).set(count)
            for gauge in sft.values():
                gauge.clear()  # a job that is no longer shown must not linger with its last values
            for info in shown_jobs(jobs):
                for name, value in sft_values(info).items():
                    sft[name].labels("trainer", info.id).set(value)
        rl = getattr(app.state, "rl", None)
        if rl is not None:
            for session, values in rl.gauges().items():
                for name, value in values.items():
                    rl_gauge.labels("trainer", session, name).set(value)
        return metrics.render()

    app.state.config = config
    mount_service(app, metrics=metrics, render_metrics=render_metrics, api_token=config.settings.api_token,
                  max_body_bytes=config.settings.max_body_bytes,
                  routers=[ops_router, jobs_router, rl_router])
    return app
