"""The teacher service's app factory and lifespan."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shared.agent.rollout import RolloutRunner
from shared import scoring_pool
from shared.checkpoints import resolve_model, served_name
from shared.models.loading import load_tokenizer
from shared.models.openai_engine import OpenAIEngine
from shared.models.transformers_engine import TransformersEngine
from shared.observability import ScrapedCounter, ServiceMetrics, mount_service, service_app
from shared.sandbox.report import prepare_service
from shared.sandbox.warm import WarmSandboxes
from shared.settings import given_flags
from shared.schemas.sampling import SamplingParams
from shared.tools.search import tools_for_corpus
from services.teacher.api import api_router, ops_router
from services.teacher.backends import EngineBackend, ExpertBackend, OpenAIBackend, TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor
from services.teacher.serving import TeacherServing

log = logging.getLogger("score.teacher")


def app_from_args(args, settings) -> FastAPI:
    """The app `score serve teacher` runs: its flags over `SCORE_TEACHER_*` variables over the defaults."""
    return create_app(TeacherConfig(settings=settings, **given_flags(
        args, "engine", "model", "base_url", "served_model_name", "device")))


def build_backend(config: TeacherConfig, executor: Executor, sandbox_factory) -> TeacherBackend:
    if config.engine == "expert":
        # No model runs, but its steps are counted in the built-in teacher's tokenizer (see ExpertBackend).
        path, _ = resolve_model(None, home=config.settings.home, default_role="teacher")
        return ExpertBackend(executor, load_tokenizer(path))
    try:
        path, label = resolve_model(config.model, home=config.settings.home, default_role="teacher")
    except KeyError as exc:
        raise ValueError(str(exc.args[0]) if exc.args else str(exc)) from exc
    sampling = SamplingParams(temperature=config.temperature, max_tokens=config.max_step_tokens)
    if config.engine == "openai":
        engine = OpenAIEngine(config.base_url, tokenizer=load_tokenizer(path), model_name=config.served_model_name,
                              api_key=config.settings.api_token)
        runner = RolloutRunner(engine, sandbox_factory, max_concurrent_episodes=config.max_concurrent_episodes,
                               max_concurrent_executions=config.max_concurrent_sandboxes,
                               episode_timeout_s=config.episode_timeout_s)
        return OpenAIBackend(engine, runner, base_url=config.base_url, api_key=config.settings.api_token,
                             sampling=sampling, max_judge_tokens=config.max_judge_tokens)
    engine = TransformersEngine(str(path), model_name=config.served_model_name or served_name(label),
                                device=config.device, max_batch_size=config.max_batch_size,
                                prefix_cache_mb=config.prefix_cache_mb, kv_cache=config.kv_cache)
    runner = RolloutRunner(engine, sandbox_factory, max_concurrent_episodes=config.max_concurrent_episodes,
                           max_concurrent_executions=config.max_concurrent_sandboxes,
                           episode_timeout_s=config.episode_timeout_s)
    return EngineBackend(engine, runner, sampling=sampling, max_judge_tokens=config.max_judge_tokens)


def create_app(config: TeacherConfig | None = None) -> FastAPI:
    config = config or TeacherConfig()
    metrics = ServiceMetrics("teacher")
    totals = ScrapedCounter(
        "score_teacher_total", "Teacher counters since start, by counter: corrections, hard, teacher_calls, "
        "teacher_tokens (the expert: what a model teacher would have written), full_rollouts, episodes (from "
        "/v1/rollouts), scored_tokens (from /v1/logprobs).", ["service", "counter"], metrics.registry)
    generated = ScrapedCounter(
        "score_generated_tokens_total", "Tokens the teacher model generated for corrections and rollouts since "
        "start (0 for the expert engine: no model).", ["service"], metrics.registry)
    judgements = ScrapedCounter("score_teacher_judgements_total", "Judgements computed (not cached) since start, "
                                "by kind.", ["service", "kind"], metrics.registry)
    cache_hits = ScrapedCounter("score_teacher_judgement_cache_hits_total", "Judgements answered from the cache "
                                "since start.", ["service"], metrics.registry)

    sandbox_starts = ScrapedCounter(
        "score_sandbox_starts_total", "Sandboxed interpreters by how an episode got one since start: warm (started "
        "ahead of need), cold (started when asked: none was ready), discarded (died while waiting).",
        ["service", "kind"], metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scoring_pool.configure(config.settings)  # answer scoring bounded by this service's settings
        tools = tools_for_corpus(config.search_corpus)
        app.state.sandbox = await asyncio.to_thread(prepare_service, unconfined=config.settings.sandbox_unconfined)
        sandboxes = WarmSandboxes(tools=tools, limits=config.sandbox, unconfined=config.settings.sandbox_unconfined,
                                  ready=config.sandbox_ready)
        app.state.sandboxes = sandboxes
        executor = Executor(sandboxes, limit=config.max_concurrent_sandboxes)
        backend = build_backend(config, executor, sandboxes)
        try:
            await backend.start()
        except BaseException:
            await asyncio.to_thread(sandboxes.close)
            raise
        app.state.serving = TeacherServing(backend=backend, executor=executor, config=config)
        log.info("teacher ready engine=%s model=%s", backend.kind, backend.model_name)
        try:
            yield
        finally:
            try:
                await backend.close()
            finally:
                await asyncio.to_thread(sandboxes.close)

    app = service_app(
        title="SCoRe teacher service",
        description="The teacher: locates a student trajectory's first critical error and writes the corrected "
        "step (checked by execution, or judged by the teacher model), judges answer and step equivalence, and "
        "solves tasks in the agent format.",
        lifespan=lifespan,
    )

    def render_metrics():
        sandboxes = getattr(app.state, "sandboxes", None)
        if sandboxes is not None:
            for kind, value in sandboxes.stats.items():
                sandbox_starts.set(("teacher", kind), value)
        serving = getattr(app.state, "serving", None)
        if serving is not None:
            for name, value in serving.totals.items():
                totals.set(("teacher", name), value)
            totals.set(("teacher", "scored_tokens"), serving.scorer.scored_tokens)
            # The expert's `teacher_tokens` are what a model would have written; no model generated them.
            generated.set(("teacher",), serving.totals["teacher_tokens"] if serving.backend.has_model else 0)
            for kind, value in serving.judgements.totals.items():
                judgements.set(("teacher", kind), value)
            cache_hits.set(("teacher",), serving.judgements.cache.hits)
        return metrics.render()

    mount_service(app, metrics=metrics, render_metrics=render_metrics, api_token=config.settings.api_token,
                  max_body_bytes=config.settings.max_body_bytes,
                  routers=[ops_router, api_router])
    return app
