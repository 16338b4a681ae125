"""The coordinator service's app factory and lifespan: Redis, the runs API and the stage workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.exceptions import RedisError
from prometheus_client import Gauge

from services.coordinator.api import experiments_router, ops_router, runs_router
from services.coordinator.config import CoordinatorConfig
from services.coordinator.queue import StageQueue
from services.coordinator.experiments import ExperimentManager
from services.coordinator.runs import RunManager
from services.coordinator.store import RunStore
from services.coordinator.supervisor import WorkerSupervisor
from shared.errors import create_error_response
from shared.observability import ServiceMetrics, mount_service, service_app
from shared.schemas.runs import RunState
from shared.settings import Settings

log = logging.getLogger("score.coordinator")
HEALTH_EVERY_S = 2.0


def app_from_args(args, settings: Settings) -> FastAPI:
    """The app `score serve coordinator` runs, from its command-line flags."""
    for flag in ("model", "engine", "base_url", "served_model_name", "device"):
        if getattr(args, flag, None):
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to the coordinator: it holds no model")
    return create_app(CoordinatorConfig(settings=settings))


def create_app(config: CoordinatorConfig | None = None) -> FastAPI:
    config = config or CoordinatorConfig()
    settings = config.settings
    metrics = ServiceMetrics("coordinator")
    queue_gauge = Gauge("score_queue_items", "Stage queue items by kind: waiting (not yet read by a worker), "
                        "pending (read, not acked) and dead (dead-lettered).", ["service", "queue", "kind"],
                        registry=metrics.registry)
    runs_gauge = Gauge("score_runs", "Runs by state.", ["service", "state"], registry=metrics.registry)
    version_gauge = Gauge("score_run_policy_version", "Policy version the student serves for each active run.",
                          ["service", "run"], registry=metrics.registry)
    workers_gauge = Gauge("score_workers_alive", "Stage worker processes alive.", ["service"], registry=metrics.registry)

    async def refresh_gauges(app: FastAPI) -> dict:
        """Set the gauges from Redis; the queue depth (for /ready)."""
        depth = await app.state.queue.depth()
        for name, counts in depth.items():
            for kind, value in counts.items():
                queue_gauge.labels("coordinator", name, kind).set(value)
        states = {run_id: await app.state.store.state(run_id) for run_id in await app.state.store.list_ids()}
        for state in RunState:
            runs_gauge.labels("coordinator", state.value).set(sum(s == state for s in states.values()))
        version_gauge.clear()  # ended runs drop out
        for run_id, state in states.items():
            version = None if state.terminal else (await app.state.store.pointers(run_id)).policy_version
            if version is not None:
                version_gauge.labels("coordinator", run_id).set(version)
        workers_gauge.labels("coordinator").set(app.state.supervisor.alive())
        return depth

    async def watch_health(app: FastAPI) -> None:
        """Keep /ready and the gauges current; log Redis outages once, and recoveries."""
        was_up = True
        while True:
            try:
                await app.state.redis.ping()
                depth = await refresh_gauges(app)
                if not was_up:
                    log.info("Redis at %s reachable again", settings.redis_url)
                was_up = True
                app.state.health = {"redis": True, "workers": app.state.supervisor.alive(), "queues": depth}
            except Exception as exc:  # any Redis failure: report, keep serving what does not need it
                if was_up:
                    log.error("Redis at %s unreachable: %s", settings.redis_url, exc)
                was_up = False
                app.state.health = {"redis": False, "error": str(exc)}
            workers_gauge.labels("coordinator").set(app.state.supervisor.alive())
            await asyncio.sleep(HEALTH_EVERY_S)

    async def render_metrics():
        # Fresh at every scrape; while Redis is down the last values stay (the health loop logs the outage).
        with contextlib.suppress(Exception):
            await asyncio.wait_for(refresh_gauges(app), timeout=5.0)
        return metrics.render()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=3)
        app.state.redis = client
        app.state.store = RunStore(client, settings.runs_dir)
        app.state.queue = StageQueue(client, consumer="api")
        app.state.runs = RunManager(app.state.store, app.state.queue, settings.runs_dir, settings)
        app.state.experiments = ExperimentManager(app.state.runs, settings.home / "experiments", settings.runs_dir)
        app.state.health = None
        with contextlib.suppress(Exception):  # Redis may come up after us; the workers and /ready wait for it
            await app.state.queue.ensure_groups()
        supervisor = WorkerSupervisor(count=config.workers, redis_url=settings.redis_url,
                                      concurrency=config.worker_concurrency, visibility_ms=config.visibility_ms,
                                      backoff_s=config.restart_backoff_s)
        app.state.supervisor = supervisor
        await supervisor.start()
        watcher = asyncio.create_task(watch_health(app))
        experiments = asyncio.create_task(app.state.experiments.watch())
        log.info("coordinator ready redis=%s workers=%d home=%s", settings.redis_url, config.workers, settings.home)
        try:
            yield
        finally:
            watcher.cancel()
            experiments.cancel()
            await supervisor.stop()
            await client.aclose()

    app = service_app(
        title="SCoRe coordinator",
        description="Runs of the SCoRe pipeline (cold start, mentored problem solving, SCoRe-SFT, SCoRe-RL, "
        "evaluation, baseline) on Redis Streams: create and follow runs, read trajectories, reports and datasets.",
        lifespan=lifespan,
    )
    app.state.config = config

    @app.exception_handler(RedisError)
    async def _redis_down(_request, exc: RedisError):
        # Nothing accepted is lost (it is in Redis or not accepted at all); the client may retry.
        return create_error_response(503, f"Redis at {settings.redis_url} is unavailable ({type(exc).__name__}: {exc}); "
                                     "retry shortly", error_type="unavailable")

    mount_service(app, metrics=metrics, render_metrics=render_metrics, api_token=settings.api_token,
                  max_body_bytes=settings.max_body_bytes,
                  routers=[ops_router, runs_router, experiments_router])
    return app
