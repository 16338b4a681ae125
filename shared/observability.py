"""Prometheus metrics and structured logs for the services.

Log lines carry the ids of the work they belong to: the request being served (`request_id`, taken from an
incoming `x-request-id` or made up), and in the coordinator's stage workers the run, stage and item. The ids
live in context variables, so every log line written while handling that work carries them, library code
included, and outgoing HTTP calls forward them (`x-request-id`, `x-score-run-id`) so one id follows a
request across services.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import time
import uuid
from contextvars import ContextVar

import httpx
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.datastructures import Headers, MutableHeaders


access_log = logging.getLogger("score.access")
_QUIET_ROUTES = {"/health", "/ready", "/metrics"}  # polled constantly; logging them drowns the rest

REQUEST_ID_HEADER = "x-request-id"
RUN_ID_HEADER = "x-score-run-id"
# Ids arrive from other processes and end up in log lines: anything else (newlines, quotes) is not trusted.
_SAFE_ID = re.compile(r"[A-Za-z0-9._:/@+-]{1,128}")

request_id_var: ContextVar[str | None] = ContextVar("score_request_id", default=None)
run_id_var: ContextVar[str | None] = ContextVar("score_run_id", default=None)
stage_var: ContextVar[str | None] = ContextVar("score_stage", default=None)
item_var: ContextVar[str | None] = ContextVar("score_item", default=None)
CONTEXT_FIELDS = {"request_id": request_id_var, "run_id": run_id_var, "stage": stage_var, "item": item_var}


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def safe_id(value: str | None) -> str | None:
    return value if value and _SAFE_ID.fullmatch(value) else None


@contextlib.contextmanager
def log_context(**ids: str | None):
    """Within the block, log lines (and outgoing calls) carry these ids: `request_id`, `run_id`, `stage`, `item`."""
    tokens = [(CONTEXT_FIELDS[name], CONTEXT_FIELDS[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def outgoing_headers() -> dict[str, str]:
    """The ids of the current context, as headers for a call to another service."""
    headers = {}
    if (request_id := request_id_var.get()) is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if (run_id := run_id_var.get()) is not None:
        headers[RUN_ID_HEADER] = run_id
    return headers


async def _forward_ids(request: httpx.Request) -> None:
    for name, value in outgoing_headers().items():
        request.headers.setdefault(name, value)


def traced_async_client(**kwargs) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` whose requests carry the caller's request and run ids (read when each is sent)."""
    hooks = kwargs.pop("event_hooks", None) or {}
    hooks = {**hooks, "request": [*hooks.get("request", []), _forward_ids]}
    return httpx.AsyncClient(event_hooks=hooks, **kwargs)


# --- logging ---------------------------------------------------------------------------------------------

_base_factory = logging.getLogRecordFactory()


def _record_with_context(*args, **kwargs) -> logging.LogRecord:
    # Read when the record is made, in the task that logs: a handler may format it later or elsewhere.
    record = _base_factory(*args, **kwargs)
    for name, var in CONTEXT_FIELDS.items():
        setattr(record, name, var.get())
    return record


logging.setLogRecordFactory(_record_with_context)


class KeyValueFormatter(logging.Formatter):
    """`<time> <LEVEL> service=... request_id=... run_id=... stage=... item=... logger=... message`; empty ids
    are left out, values with spaces or quotes are JSON-quoted."""

    def __init__(self, service: str, *, pid: bool = False) -> None:
        super().__init__()
        self.service, self.pid = service, pid

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"service={self.service}"] + ([f"pid={record.process}"] if self.pid else [])
        fields += [f"{name}={_quoted(value)}" for name, value in _ids(record)]
        line = f"{self.formatTime(record)} {record.levelname} {' '.join(fields)} logger={record.name} " \
               f"{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the text format."""

    def __init__(self, service: str, *, pid: bool = False) -> None:
        super().__init__()
        self.service, self.pid = service, pid

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "service": self.service}
        if self.pid:
            entry["pid"] = record.process
        entry.update(_ids(record))
        entry.update(logger=record.name, message=record.getMessage())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _ids(record: logging.LogRecord) -> list[tuple[str, str]]:
    return [(name, value) for name in CONTEXT_FIELDS if (value := getattr(record, name, None))]


def _quoted(value) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


def configure_logging(level: str = "info", service: str = "score", log_format: str = "text", *,
                      pid: bool = False) -> None:
    """Root logging for a service process: key=value lines (`text`) or one JSON object per line (`json`)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter((JsonFormatter if log_format == "json" else KeyValueFormatter)(service, pid=pid))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# --- metrics ---------------------------------------------------------------------------------------------


class ServiceMetrics:
    """One registry per app, so several apps can live in one process (tests) without clashing."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "score_http_requests_total", "HTTP requests served, by route template and status code (cumulative).",
            ["service", "method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "score_http_request_seconds", "HTTP request latency by route template, in seconds.",
            ["service", "method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class ScrapedCounter(Collector):
    """A counter whose values the service already keeps (engine stats, serving totals): set at scrape time and
    exported as a true Prometheus counter. Values only grow while the process lives; a restart resets them."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.values[tuple(labels)] = float(value)

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value)
        yield family

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]


def install_request_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Count and time every request by its route template (not the raw path, to bound label cardinality), and
    keep its request id (and the run id a coordinator sends) in context while it is served."""
    app.add_middleware(_ObserveRequests, metrics=metrics)


class _ObserveRequests:
    """Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each request in
    task groups and memory streams, which took about a third of a service's event-loop time per request, so a
    burst of generation requests reached the engine that much later. Counted, timed and logged once the
    response starts (as before), or when the app fails without one (500)."""

    def __init__(self, app, *, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = safe_id(headers.get(REQUEST_ID_HEADER)) or new_request_id()
        run_id = safe_id(headers.get(RUN_ID_HEADER))
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            template = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            method, metrics = scope["method"], self.metrics
            metrics.requests.labels(metrics.service, method, template, str(status)).inc()
            metrics.latency.labels(metrics.service, method, template).observe(elapsed)
            if template not in _QUIET_ROUTES:
                access_log.info("method=%s path=%s status=%d duration_ms=%.1f",
                                method, scope["path"], status, elapsed * 1000)

        async def send_observed(message) -> None:
            if message["type"] == "http.response.start" and not observed:
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
                observe(message["status"])
            await send(message)

        with log_context(request_id=request_id, run_id=run_id):
            try:
                await self.app(scope, receive, send_observed)
            finally:
                if not observed:
                    observe(500)


def ops_router(auth, *, readiness, ready_doc: str, metrics_doc: str):
    """`/health` (no auth), `/ready` and `/metrics`, the same on every service.

    `readiness(app) -> dict | None` describes a ready service, or returns None while it is still loading
    (then `/ready` answers 503). `/metrics` renders `app.state.render_metrics()` (plain or async).
    """
    from fastapi import APIRouter, Depends

    from shared.errors import ErrorResponse, UnavailableError

    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Liveness")
    async def health() -> dict:
        """The process is up (no auth, no model needed)."""
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness", dependencies=[Depends(auth)], responses={503: {"model": ErrorResponse}},
                description=ready_doc)
    async def ready(request: Request) -> dict:
        details = readiness(request.app)
        if details is None:  # the 503 carries the one error envelope, as documented
            raise UnavailableError("not ready yet: still loading or waiting for a dependency; retry shortly")
        return {"status": "ready", **details}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(auth)],
                description=metrics_doc)
    async def metrics(request: Request) -> Response:
        rendered = request.app.state.render_metrics()
        return await rendered if inspect.isawaitable(rendered) else rendered

    return router


SERVICE_VERSION = "0.1.0"


def service_app(*, title: str, description: str, lifespan) -> FastAPI:
    """A service's FastAPI app: its OpenAPI title and description; /docs and /redoc come from `mount_service`
    (local assets), so FastAPI's CDN-backed pages are off."""
    return FastAPI(docs_url=None, redoc_url=None, title=title, version=SERVICE_VERSION, description=description,
                   lifespan=lifespan)


def mount_service(app: FastAPI, *, metrics: ServiceMetrics, render_metrics, api_token: str | None, routers,
                  max_body_bytes: int) -> None:
    """What every service app shares after its own set-up: the error envelope, bounded bodies, request metrics,
    bearer auth, offline /docs and /redoc, and its routers. `routers` is a list of `factory(auth) -> APIRouter`;
    `render_metrics()` backs /metrics."""
    from shared.auth import bearer_dependency
    from shared.body_limit import BodyLimitMiddleware
    from shared.docs_ui import attach_offline_docs
    from shared.errors import install_error_handlers

    app.state.render_metrics = render_metrics
    attach_offline_docs(app)
    install_error_handlers(app)
    # Added before the metrics middleware, so it runs inside it: refused bodies are counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, token=api_token)
    install_request_metrics(app, metrics)
    auth = bearer_dependency(api_token)
    for router in routers:
        app.include_router(router(auth))
