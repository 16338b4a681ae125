"""HTTP glue of the trainer's RL part: thin routes over `RLSessions` (app.state.rl)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from shared.errors import ERROR_RESPONSES, ErrorResponse
from shared.schemas.rl import RLSessionCreate, RLSessionInfo, RLSessionList, RLStepRequest, RLStepResponse
from services.trainer.grpo.sessions import RLSessions

NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown RL session."}}
CONFLICT = {
    409: {
        "model": ErrorResponse,
        "description": "Stale or future sample `policy_version` (`error.param` names the sample), a closed session, "
        "or a session_id reused with a different body.",
    }
}


SessionId = Annotated[str, Path(description="Id of the RL session, as `POST /v1/rl/sessions` returned it.",
                                examples=["grpo-arith-01"])]


def _sessions(request: Request) -> RLSessions:
    return request.app.state.rl


def rl_router(auth) -> APIRouter:
    router = APIRouter(prefix="/v1/rl", tags=["rl"], dependencies=[Depends(auth)], responses=ERROR_RESPONSES)

    @router.post("/sessions", response_model=RLSessionInfo, status_code=201, responses={**CONFLICT, 200: {
        "model": RLSessionInfo, "description": "The session already existed with this body (idempotent create)."}})
    async def create_session(body: RLSessionCreate, request: Request, response: Response) -> RLSessionInfo:
        """Open a GRPO session on `base`; the policy and optimizer are loaded on the first step."""
        info, created = await _sessions(request).create(body)
        if not created:
            response.status_code = 200
        return info

    @router.get("/sessions", response_model=RLSessionList)
    async def list_sessions(request: Request) -> RLSessionList:
        """Every RL session on this trainer's SCORE_HOME, newest first."""
        return _sessions(request).list()

    @router.get("/sessions/{session_id}", response_model=RLSessionInfo, responses=NOT_FOUND)
    async def get_session(session_id: SessionId, request: Request) -> RLSessionInfo:
        """A session's policy version, latest checkpoint, hyperparameters and last step's metrics."""
        return _sessions(request).get(session_id)

    @router.post("/sessions/{session_id}/steps", response_model=RLStepResponse, responses={**NOT_FOUND, **CONFLICT})
    async def step(session_id: SessionId, body: RLStepRequest, request: Request) -> RLStepResponse:
        """Apply one GRPO update to a batch of rollout groups and publish the result as the next checkpoint.

        Load `checkpoint.path` into the student with `POST /v1/weights {"path", "version": policy_version}`.
        Steps of one session run one at a time; samples older than `max_staleness` versions are refused (409).
        """
        return await _sessions(request).step(session_id, body)

    @router.delete("/sessions/{session_id}", response_model=RLSessionInfo, responses=NOT_FOUND)
    async def close_session(session_id: SessionId, request: Request) -> RLSessionInfo:
        """Close a session: frees its policy's memory and refuses further steps; checkpoints stay published."""
        return await _sessions(request).close(session_id)

    return router
