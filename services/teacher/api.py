"""HTTP glue of the teacher service: thin routes over `TeacherServing`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from shared.errors import ERROR_RESPONSES, ErrorResponse, UnavailableError
from shared.observability import ops_router as shared_ops_router
from shared.schemas.logprobs import LogprobRequest, LogprobResponse
from shared.schemas.teacher import (
    CorrectionRequest, CorrectionResponse, JudgementRequest, JudgementResponse, TeacherRolloutRequest,
    TeacherRolloutResponse,
)
from services.teacher.serving import TeacherServing

UNAVAILABLE = {503: {"model": ErrorResponse, "description": "The sandbox could not start an interpreter, or the teacher "
                     "model's server failed; retry later."}}


def _serving(request: Request) -> TeacherServing:
    return request.app.state.serving


def ops_router(auth) -> APIRouter:
    def readiness(app) -> dict | None:
        serving = getattr(app.state, "serving", None)
        if serving is None:
            return None
        engine = getattr(serving.backend, "engine", None)
        if engine is not None and (failure := engine.failure()) is not None:
            raise UnavailableError(f"the model engine cannot generate: {failure}; restart the service")
        if not app.state.sandbox["ok"]:   # fail closed: corrections need the sandbox, so not ready
            raise UnavailableError(f"sandbox unavailable: {app.state.sandbox['problem']}")
        return {"engine": serving.backend.kind, "model": serving.backend.model_name, "sandbox": app.state.sandbox}

    return shared_ops_router(
        auth, readiness=readiness,
        ready_doc="The teacher backend is loaded and corrections can be served; also reports the sandbox boundary "
        "and layers. 503 while loading, or when the host cannot provide the sandbox boundary (the message says what "
        "is missing).",
        metrics_doc="Request counts and latency, corrections, hard trajectories, episodes, teacher calls, tokens and "
        "rollouts.",
    )


def api_router(auth) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)], responses={**ERROR_RESPONSES, **UNAVAILABLE},
                       tags=["teacher"])

    @router.post("/corrections", response_model=CorrectionResponse)
    async def corrections(body: CorrectionRequest, request: Request) -> CorrectionResponse:
        """Locate each trajectory's first critical error and write the corrected step (in item order).

        `verify` executes the teacher's own step at every prefix and confirms the correction with a full
        teacher rollout to the gold answer; `judge` asks the teacher to name the error (JSON) and to write
        the corrected step, which is executed. Unusable repairs come back `hard` with a reason.
        """
        return await _serving(request).corrections(body)

    @router.post("/judgements", response_model=JudgementResponse)
    async def judgements(body: JudgementRequest, request: Request) -> JudgementResponse:
        """Answer equivalence (scorers first, the teacher when asked) and step equivalence (observations after
        executing both steps from the same prefix, or the teacher's verdict); cached by content."""
        return await _serving(request).judge(body)

    @router.post("/rollouts", response_model=TeacherRolloutResponse)
    async def rollouts(body: TeacherRolloutRequest, request: Request) -> TeacherRolloutResponse:
        """The teacher solves each task in the agent format, from scratch or after `prefix_steps` (in item order).

        Every step is executed in the episode's sandbox. The expert backend plays its gold trajectory; a
        model backend generates the turns. A task the backend cannot solve is 422 naming `items[i].task`.
        """
        return await _serving(request).rollouts(body)

    @router.post("/logprobs", response_model=LogprobResponse)
    async def logprobs(body: LogprobRequest, request: Request) -> LogprobResponse:
        """The teacher model's log-probability of each given token where `score_mask` is 1 (on-policy distillation:
        the student's own episodes, scored on the tokens the student wrote), batched in one forward per batch.

        422 when the backend has no model (the expert), when `tokenizer` is not the teacher's (naming both), or when
        a token id is outside the teacher's vocabulary. Every token read counts in `cost.teacher_prompt_tokens`.
        """
        return await _serving(request).scorer.score(body)

    return router
