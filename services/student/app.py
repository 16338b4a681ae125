"""The student service's app factory and lifespan."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from prometheus_client import Gauge

from shared.agent.rollout import RolloutRunner
from shared.models.engine import Engine
from shared.models.loading import load_tokenizer, resolve_model_path
from shared.models.openai_engine import OpenAIEngine
from shared.models.transformers_engine import TransformersEngine
from shared.observability import ServiceMetrics, mount_service
from shared.settings import given_flags
from shared.tools.sandbox import Sandbox, isolation_report
from shared.tools.search import BM25Search, agent_tools
from services.student.api import api_router, ops_router
from services.student.config import StudentConfig
from services.student.serving import StudentServing

log = logging.getLogger("score.student")


def build_engine(config: StudentConfig) -> Engine:
    path = resolve_model_path(config.model, "student", config.settings.home)
    name = config.served_model_name or (Path(config.model).name if config.model else "score-student")
    if config.engine == "openai":
        if not config.base_url:
            raise ValueError("--engine openai needs --base-url (an OpenAI-compatible server, e.g. http://vllm:8000/v1)")
        tokenizer = load_tokenizer(path)
        return OpenAIEngine(
            config.base_url, tokenizer=tokenizer, model_name=config.served_model_name,
            api_key=config.settings.api_token, weight_sync=config.weight_sync,
        )
    return TransformersEngine(str(path), model_name=name, device=config.device, max_batch_size=config.max_batch_size)


def build_tools(config: StudentConfig) -> dict:
    if config.search_corpus:
        backend = BM25Search.from_jsonl(config.search_corpus)
    else:
        from shared.tasks.builtin import builtin_search_backend

        backend = builtin_search_backend()
    return agent_tools(backend)


def app_from_args(args, settings) -> FastAPI:
    """The app `score serve student` runs: its flags over `SCORE_STUDENT_*` variables over the defaults."""
    if args.engine == "expert":
        raise ValueError("--engine expert is the teacher's scripted solver; the student takes transformers or openai")
    return create_app(StudentConfig(settings=settings, **given_flags(
        args, "model", "engine", "base_url", "served_model_name", "device")))


def create_app(config: StudentConfig | None = None) -> FastAPI:
    config = config or StudentConfig()
    metrics = ServiceMetrics("student")
    version_gauge = Gauge("score_policy_version", "Policy version served.", ["service"], registry=metrics.registry)
    counters = Gauge("score_engine_total", "Engine counters (tokens, batches).", ["service", "counter"], registry=metrics.registry)
    episodes_gauge = Gauge("score_rollout_episodes_total", "Episodes rolled out.", ["service"], registry=metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = build_engine(config)
        await engine.start()
        tools = build_tools(config)
        runner = RolloutRunner(
            engine, partial(Sandbox, tools=tools, limits=config.sandbox),
            max_concurrent_episodes=config.max_concurrent_episodes,
        )
        app.state.sandbox_layers = isolation_report()
        app.state.serving = StudentServing(engine=engine, runner=runner, settings=config.settings)
        log.info("student ready engine=%s model=%s", engine.kind, engine.model_name)
        try:
            yield
        finally:
            await engine.close()

    app = FastAPI(
        title="SCoRe student service",
        version="0.1.0",
        description="The student policy: OpenAI-compatible generation, agent rollouts in sandboxed interpreters, "
        "token-exact training data, and weight reloads between policy versions.",
        lifespan=lifespan,
    )

    def render_metrics():
        serving = getattr(app.state, "serving", None)
        if serving is not None:
            version_gauge.labels("student").set(serving.engine.policy_version)
            episodes_gauge.labels("student").set(serving.episodes_total)
            for name, value in serving.engine.stats().items():
                counters.labels("student", name).set(value)
        return metrics.render()

    mount_service(app, metrics=metrics, render_metrics=render_metrics, api_token=config.settings.api_token,
                  routers=[ops_router, api_router])
    return app
