"""Prometheus metrics and structured logs for the services."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


access_log = logging.getLogger("score.access")
_QUIET_ROUTES = {"/health", "/ready", "/metrics"}  # polled constantly; logging them drowns the rest


class ServiceMetrics:
    """One registry per app, so several apps can live in one process (tests) without clashing."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "score_http_requests_total", "HTTP requests by route and status.",
            ["service", "method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "score_http_request_seconds", "HTTP request latency by route.",
            ["service", "method", "route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def install_request_metrics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Count and time every request by its route template (not the raw path, to bound label cardinality)."""

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        started = time.perf_counter()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["x-request-id"] = request_id
            return response
        finally:
            route = request.scope.get("route")
            template = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.requests.labels(metrics.service, request.method, template, str(status)).inc()
            metrics.latency.labels(metrics.service, request.method, template).observe(elapsed)
            if template not in _QUIET_ROUTES:
                access_log.info(
                    "request_id=%s method=%s path=%s status=%d duration_ms=%.1f",
                    request_id, request.method, request.url.path, status, elapsed * 1000,
                )


def configure_logging(level: str = "info", service: str = "score") -> None:
    """Short, greppable key=value log lines with the service name."""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s service={service} logger=%(name)s %(message)s",
        force=True,
    )


def ops_router(auth, *, readiness, ready_doc: str, metrics_doc: str):
    """`/health` (no auth), `/ready` and `/metrics`, the same on every service.

    `readiness(app) -> dict | None` describes a ready service, or returns None while it is still loading
    (then `/ready` answers 503). `/metrics` renders `app.state.render_metrics()`.
    """
    from fastapi import APIRouter, Depends

    from shared.errors import ErrorResponse

    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Liveness")
    async def health() -> dict:
        """The process is up (no auth, no model needed)."""
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness", dependencies=[Depends(auth)], responses={503: {"model": ErrorResponse}},
                description=ready_doc)
    async def ready(request: Request, response: Response) -> dict:
        details = readiness(request.app)
        if details is None:
            response.status_code = 503
            return {"status": "loading"}
        return {"status": "ready", **details}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(auth)],
                description=metrics_doc)
    async def metrics(request: Request) -> Response:
        return request.app.state.render_metrics()

    return router


def mount_service(app: FastAPI, *, metrics: ServiceMetrics, render_metrics, api_token: str | None, routers) -> None:
    """What every service app shares after its own set-up: the error envelope, request metrics, bearer auth
    and its routers. `routers` is a list of `factory(auth) -> APIRouter`; `render_metrics()` backs /metrics."""
    from shared.auth import bearer_dependency
    from shared.errors import install_error_handlers

    app.state.render_metrics = render_metrics
    install_error_handlers(app)
    install_request_metrics(app, metrics)
    auth = bearer_dependency(api_token)
    for router in routers:
        app.include_router(router(auth))
