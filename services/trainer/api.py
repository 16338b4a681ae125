"""HTTP glue of the trainer service: thin routes over `JobManager`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from shared.errors import ErrorResponse


def ops_router(auth) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="Liveness")
    async def health() -> dict:
        """The process is up (no auth)."""
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness", dependencies=[Depends(auth)], responses={503: {"model": ErrorResponse}})
    async def ready(request: Request, response: Response) -> dict:
        """Jobs can be accepted: the checkpoint store and job directory are open."""
        if getattr(request.app.state, "store", None) is None:
            response.status_code = 503
            return {"status": "loading"}
        jobs = getattr(request.app.state, "jobs", None)
        return {"status": "ready", "home": str(request.app.state.settings.home),
                "jobs": jobs.counts() if jobs is not None else {}}

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[Depends(auth)])
    async def metrics(request: Request) -> Response:
        """Request counts and latency, jobs by state."""
        return request.app.state.render_metrics()

    return router
