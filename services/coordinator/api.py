"""HTTP glue of the coordinator: the runs API (thin routes over `RunManager`) and the ops routes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, StreamingResponse

from services.coordinator.report_html import render_report_html
from services.coordinator.runs import RunManager
from shared.errors import ERROR_RESPONSES, ErrorResponse, NotFoundError, UnprocessableError
from shared.observability import ops_router as shared_ops_router
from shared.schemas.experiments import ExperimentConfig, ExperimentInfo
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import DeadLetterList, RunInfo, RunList
from shared.schemas.trajectories import TrajectoryList
from shared.sse import ServerSentEvent, event_stream

NOT_FOUND = {404: {"model": ErrorResponse, "description": "No run with this id (or the artifact is not written yet)."}}
CONFLICT = {409: {"model": ErrorResponse, "description": "The run's state does not allow this (it already ended)."}}
RunId = Annotated[str, PathParam(description="Id of the run, as `POST /v1/runs` returned it.",
                                 examples=["run-20250611-142233-3f2a9c"])]


def ops_router(auth) -> APIRouter:
    def readiness(app) -> dict | None:
        health = getattr(app.state, "health", None)
        if health is None or not health.get("redis"):
            return None
        return health

    return shared_ops_router(
        auth, readiness=readiness,
        ready_doc="Redis answers and the stage workers are running (503 otherwise, with what is missing).",
        metrics_doc="Request counts and latency, queue depth and dead letters per stage, runs by state, workers alive.",
    )


def _runs(request: Request) -> RunManager:
    return request.app.state.runs


def runs_router(auth) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)], responses=ERROR_RESPONSES, tags=["runs"])

    @router.post("/runs", response_model=RunInfo, status_code=201)
    async def create_run(config: RunConfig, request: Request) -> RunInfo:
        """Create and start a run. Every field has a default (`{}` runs the built-in suite); a bad config or task
        file is refused with 422 naming the field or line, and nothing is created."""
        return await _runs(request).create(config)

    @router.get("/runs", response_model=RunList)
    async def list_runs(request: Request) -> RunList:
        """Every run, newest first."""
        return RunList(runs=await _runs(request).list())

    @router.get("/runs/{run_id}", response_model=RunInfo, responses=NOT_FOUND)
    async def get_run(run_id: RunId, request: Request) -> RunInfo:
        """State, current stage, per-stage progress (items, items/s, ETA), counters and held-out results."""
        return await _runs(request).get(run_id)

    @router.post("/runs/{run_id}/cancel", response_model=RunInfo, responses={**NOT_FOUND, **CONFLICT})
    async def cancel_run(run_id: RunId, request: Request) -> RunInfo:
        """Cancel a queued or running run: its remaining items are dropped as workers meet them."""
        return await _runs(request).cancel(run_id)

    @router.get("/runs/{run_id}/events", responses={**NOT_FOUND, 200: {
        "description": "Server-Sent Events: `id` (resume with `Last-Event-ID` or `after`), `event` (the type) and "
        "`data` (a RunEvent as JSON). The stream ends after the run reaches a final state.",
        "content": {"text/event-stream": {}}}})
    async def run_events(
        run_id: RunId, request: Request,
        after: str = Query(default="0", description="Only events after this event id (`0`: from the start).",
                           examples=["1749651990412-0"]),
        follow: bool = Query(default=True, description="Keep the stream open until the run ends.", examples=[False]),
        last_event_id: str | None = Header(default=None, description="Standard SSE resume header; wins over `after`.",
                                           examples=["1749651990412-0"]),
    ) -> StreamingResponse:
        """Progress of a run as Server-Sent Events."""
        runs = _runs(request)
        await runs.get(run_id)
        return event_stream(_run_events(runs, run_id, last_event_id or after, follow=follow), request)

    @router.get("/runs/{run_id}/trajectories", response_model=TrajectoryList, responses=NOT_FOUND)
    async def trajectories(
        run_id: RunId, request: Request,
        stage: Literal["bc_init", "mps", "baseline", "baseline_tokens"] | None = Query(
            default=None, description="Only this stage.", examples=["mps"]),
        outcome: Literal["self_solved", "repaired", "hard", "unsolved", "teacher_solved", "teacher_failed"] | None =
        Query(default=None, description="Only trajectories with this outcome.", examples=["repaired"]),
        offset: int = Query(default=0, ge=0, le=2**31 - 1, description="Skip this many.", examples=[0]),
        limit: int = Query(default=100, ge=1, le=1000, description="Return at most this many.", examples=[20]),
    ) -> TrajectoryList:
        """Finished trajectories: teacher solutions (cold start, baseline) and mentored student episodes with
        their repairs, first critical error, chosen and rejected steps."""
        records = await _runs(request).records(run_id, stage=stage, outcome=outcome)
        return TrajectoryList(trajectories=records[offset:offset + limit], total=len(records))

    @router.get("/runs/{run_id}/dead_letters", response_model=DeadLetterList, responses=NOT_FOUND)
    async def dead_letters(run_id: RunId, request: Request) -> DeadLetterList:
        """Items that exhausted their attempts, with the error that stopped them."""
        await _runs(request).get(run_id)
        return DeadLetterList(dead_letters=await _runs(request).store.dead_letters(run_id))

    # `Response` (no media type of its own) keeps the error responses documented as the JSON they are.
    @router.get("/runs/{run_id}/report", response_class=Response, responses={**NOT_FOUND, 200: {
        "description": "The run's report.md (markdown).", "content": {"text/markdown": {"schema": {"type": "string"}}}}})
    async def report(run_id: RunId, request: Request) -> PlainTextResponse:
        """The run's report (markdown), written when the run finishes."""
        path = await _artifact(request, run_id, "report.md")
        return PlainTextResponse(path.read_text(), media_type="text/markdown")

    @router.get("/runs/{run_id}/report.html", response_class=Response, responses={**NOT_FOUND, 200: {
        "description": "The run's report as one HTML page, plots inlined.", "content": {"text/html": {}}}})
    async def report_html(run_id: RunId, request: Request) -> HTMLResponse:
        """The run's report as a self-contained HTML page (tables and plots inline), to open in a browser."""
        path = await _artifact(request, run_id, "report.md")
        return HTMLResponse(render_report_html(path.parent))

    @router.get("/runs/{run_id}/metrics", responses={**NOT_FOUND, 200: {"description": "metrics.json of the run."}})
    async def run_metrics(run_id: RunId, request: Request) -> dict:
        """The run's metrics.json: held-out results per policy (`eval`), MPS, RL and timing."""
        return json.loads((await _artifact(request, run_id, "metrics.json")).read_text())

    @router.get("/runs/{run_id}/plots/{name}", response_class=FileResponse, responses={**NOT_FOUND, 200: {
        "description": "A PNG plot of the run.", "content": {"image/png": {}}}})
    async def plot(
        run_id: RunId, request: Request,
        name: str = PathParam(description="File name of the plot.", examples=["success_by_stage.png"]),
    ) -> FileResponse:
        """A plot from the run's report (e.g. `success_by_stage.png`)."""
        if "/" in name or not name.endswith(".png"):
            raise UnprocessableError("plot names look like `success_by_stage.png`", param="name")
        return FileResponse(await _artifact(request, run_id, f"plots/{name}"), media_type="image/png")

    @router.get("/runs/{run_id}/datasets/{name}", response_class=FileResponse, responses={**NOT_FOUND, 200: {
        "description": "The dataset file: JSON lines (messages, sharegpt) or parquet (verl).",
        "content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}})
    async def dataset(
        run_id: RunId, request: Request,
        name: Literal["bc_init", "sft", "baseline", "rl"] = PathParam(
            description="Which dataset: `bc_init`, `sft`, `baseline` or `rl`.", examples=["sft"]),
        format: Literal["messages", "sharegpt", "verl"] = Query(
            default="messages", description="`messages` (OpenAI JSONL, canonical), `sharegpt` (LLaMA-Factory) or "
            "`verl` (parquet with prompt, reward_model.ground_truth and prefix/chosen/rejected steps).",
            examples=["messages"]),
    ) -> FileResponse:
        """Export one of the run's datasets: `bc_init` (teacher cold start), `sft` (SCoRe-SFT), `baseline`
        (plain distillation) or `rl` (verified prefixes with chosen and rejected steps)."""
        path = await _runs(request).export(run_id, name, format)
        media = "application/vnd.apache.parquet" if format == "verl" else "application/x-ndjson"
        return FileResponse(path, media_type=media, filename=path.name)

    @router.get("/queues", tags=["operations"])
    async def queues(request: Request) -> dict:
        """Per stage queue: items waiting, pending (being processed) and dead-lettered."""
        return await request.app.state.queue.depth()

    return router


async def _run_events(runs: RunManager, run_id: str, cursor: str, *, follow: bool):
    """The run's events after `cursor` (None while there is nothing new), until the run has ended and every
    event is out; without `follow`, only what exists now."""
    while True:
        events = await runs.events(run_id, cursor, block_ms=1000 if follow else None)
        for event in events:
            cursor = event.id
            yield ServerSentEvent(id=event.id, event=event.type, data=event.model_dump_json())
        if not follow:
            return
        if events:
            continue
        if (await runs.get(run_id)).state.terminal:
            if not await runs.events(run_id, cursor):
                return
            continue
        yield None


async def _artifact(request: Request, run_id: str, relative: str):
    info = await _runs(request).get(run_id)
    path = Path(info.artifacts) / relative
    if not path.is_file():
        raise NotFoundError(f"run {run_id} has no {relative} yet (state {info.state.value})", param="run_id")
    return path


ExperimentId = Annotated[str, PathParam(description="Id of the experiment, as `POST /v1/experiments` returned it.",
                                        examples=["exp-20261203-101500-1a2b3c"])]


def experiments_router(auth) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)], responses=ERROR_RESPONSES, tags=["experiments"])
    not_found = {404: {"model": ErrorResponse, "description": "No experiment with this id (or no results yet)."}}

    @router.post("/experiments", response_model=ExperimentInfo, status_code=201)
    async def create_experiment(config: ExperimentConfig, request: Request) -> ExperimentInfo:
        """Start an experiment: one run per seed, one after another, every arm from the seed's cold start and
        evaluated on one fixed held-out set; results under `SCORE_HOME/experiments/<id>/`."""
        return await request.app.state.experiments.create(config)

    @router.get("/experiments/{experiment_id}", response_model=ExperimentInfo, responses=not_found)
    async def get_experiment(experiment_id: ExperimentId, request: Request) -> ExperimentInfo:
        """State, the run of each seed started so far, and once finished the pooled results and comparisons."""
        return await request.app.state.experiments.get(experiment_id)

    @router.get("/experiments/{experiment_id}/results", responses={
        **not_found, 200: {"content": {"application/json": {}}, "description": "results.json"}})
    async def get_experiment_results(experiment_id: ExperimentId, request: Request) -> FileResponse:
        """`results.json`: per arm and seed the per-task outcomes and costs, and the comparisons."""
        return FileResponse(await request.app.state.experiments.results(experiment_id), media_type="application/json")

    return router
