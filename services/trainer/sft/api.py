"""HTTP glue of the trainer service: thin routes over `JobManager`."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from shared.errors import ERROR_RESPONSES, ErrorResponse
from shared.observability import ops_router as shared_ops_router
from shared.schemas.training import TERMINAL_STATES, JobInfo, JobList, JobRequest
from shared.sse import ServerSentEvent, event_stream
from services.trainer.sft.jobs import JobManager

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No job with this id."}}
CONFLICT = {409: {"model": ErrorResponse, "description": "The job's state does not allow this (e.g. it finished)."}}
JobId = Annotated[str, Path(description="Id of the job, as `POST /v1/jobs` returned it.", examples=["sft-arith-01"])]


def ops_router(auth) -> APIRouter:
    def readiness(app) -> dict | None:
        if getattr(app.state, "store", None) is None:
            return None
        jobs = getattr(app.state, "jobs", None)
        return {"home": str(app.state.settings.home), "jobs": jobs.counts() if jobs is not None else {}}

    return shared_ops_router(
        auth, readiness=readiness,
        ready_doc="Jobs can be accepted: the checkpoint store and job directory are open.",
        metrics_doc="Request counts and latency, jobs by state, RL sessions.",
    )


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def jobs_router(auth) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)], responses=ERROR_RESPONSES, tags=["jobs"])

    @router.post("/jobs", response_model=JobInfo, status_code=201,
                 responses={200: {"model": JobInfo, "description": "A job with this `job_id` exists; returned as is."}})
    async def create_job(body: JobRequest, request: Request, response: Response) -> JobInfo:
        """Create a training job; it is queued and starts when the trainer has a free slot.

        Bad input is 422 naming the field (`body.base` for an unknown checkpoint, `body.dataset.rows.3` for a
        conversation without an assistant turn, `body.dataset.path` with the line number for a bad JSONL line).
        """
        info, created = _jobs(request).create(body)
        if not created:
            response.status_code = 200
        return info

    @router.get("/jobs", response_model=JobList)
    async def list_jobs(request: Request) -> JobList:
        """Every job this trainer knows, oldest first (they persist across restarts)."""
        return JobList(jobs=_jobs(request).list())

    @router.get("/jobs/{job_id}", response_model=JobInfo, responses=NOT_FOUND)
    async def get_job(job_id: JobId, request: Request) -> JobInfo:
        """State, step, total steps, latest metrics, ETA, and the published checkpoint once succeeded."""
        return _jobs(request).get(job_id).info

    @router.post("/jobs/{job_id}/cancel", response_model=JobInfo, responses={**NOT_FOUND, **CONFLICT})
    async def cancel_job(job_id: JobId, request: Request) -> JobInfo:
        """Cancel a queued or running job (its training process is stopped); 409 if it already finished."""
        return _jobs(request).cancel(job_id)

    @router.get("/jobs/{job_id}/events", responses={
        **NOT_FOUND,
        200: {"description": "JSON lines (`application/x-ndjson`), or Server-Sent Events with `stream=true`.",
              "content": {"application/x-ndjson": {}, "text/event-stream": {}}},
    })
    async def job_events(
        job_id: JobId, request: Request,
        after: int = Query(-1, ge=-1, le=2**31 - 1, description="Only events with `seq` greater than this.",
                           examples=[12]),
        stream: bool = Query(False, description="Server-Sent Events that follow the job until it ends.",
                             examples=[False]),
    ) -> Response:
        """The job's event log: state changes, progress (step and metrics), checkpoints."""
        job = _jobs(request).get(job_id)
        if not stream:
            body = "".join(e.model_dump_json(exclude_none=True) + "\n" for e in job.events(after))
            return Response(body, media_type="application/x-ndjson")
        return event_stream(_follow(job, after), request)

    return router


async def _follow(job, after: int):
    """The job's events after `after` (None while there is nothing new), until the job reaches a terminal state."""
    while True:
        terminal = job.info.state in TERMINAL_STATES  # read before the events, so none is missed
        for event in job.events(after):
            after = event.seq
            yield ServerSentEvent(id=str(event.seq), event=event.type, data=event.model_dump_json(exclude_none=True))
        if terminal:
            return
        yield None
        await asyncio.sleep(0.5)
