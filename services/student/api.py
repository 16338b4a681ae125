"""HTTP glue of the student service: thin routes over `StudentServing`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from shared.errors import ERROR_RESPONSES, ErrorResponse, UnavailableError
from shared.observability import ops_router as shared_ops_router
from shared.schemas.openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
)
from shared.schemas.rollout import RolloutRequest, RolloutResponse
from shared.schemas.weights import LoadWeightsRequest, WeightsInfo
from services.student.serving import StudentServing

NOT_FOUND = {404: {"model": ErrorResponse, "description": "Unknown model or checkpoint."}}
VERSION_CONFLICT = {409: {"model": ErrorResponse, "description": "The version is not above the one served."}}
UNAVAILABLE = {503: {"model": ErrorResponse, "description": "The sandbox could not start an interpreter; retry later."}}


def _serving(request: Request) -> StudentServing:
    return request.app.state.serving


def ops_router(auth) -> APIRouter:
    def readiness(app) -> dict | None:
        serving = getattr(app.state, "serving", None)
        if serving is None:
            return None
        if (failure := serving.engine.failure()) is not None:
            raise UnavailableError(f"the model engine cannot generate: {failure}; restart the service")
        if not app.state.sandbox["ok"]:   # fail closed: rollouts would be refused, so the service is not ready
            raise UnavailableError(f"sandbox unavailable: {app.state.sandbox['problem']}")
        return {"model": serving.engine.model_name, "engine": serving.engine.kind,
                "policy_version": serving.engine.policy_version, "sandbox": app.state.sandbox}

    return shared_ops_router(
        auth, readiness=readiness,
        ready_doc="The model is loaded and requests can be served; also reports the sandbox boundary and layers in "
        "force. 503 while loading, or when the host cannot provide the sandbox boundary (the message says what is "
        "missing).",
        metrics_doc="Request counts and latency, tokens generated, batches, episodes, policy version.",
    )


def api_router(auth) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)], responses=ERROR_RESPONSES)

    @router.get("/models", response_model=ModelList, tags=["openai"])
    async def list_models(request: Request) -> ModelList:
        """The one model this service serves (OpenAI-compatible)."""
        return _serving(request).models()

    @router.post("/chat/completions", response_model=ChatCompletionResponse, tags=["openai"], responses=NOT_FOUND)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> ChatCompletionResponse:
        """Chat completion (OpenAI-compatible: messages, max_tokens, temperature, top_p, n, stop, seed, logprobs)."""
        return await _serving(request).chat(body)

    @router.post("/completions", response_model=CompletionResponse, tags=["openai"], responses=NOT_FOUND)
    async def completions(body: CompletionRequest, request: Request) -> CompletionResponse:
        """Completion from a token-id prompt, as vLLM accepts it (used by remote engines for token-exact rollouts)."""
        return await _serving(request).completions(body)

    @router.post("/rollouts", response_model=RolloutResponse, tags=["agent"], responses=UNAVAILABLE)
    async def rollouts(body: RolloutRequest, request: Request) -> RolloutResponse:
        """Run `n` agent episodes per item in fresh sandboxes, optionally continuing a trusted prefix.

        Returns episodes in item order with their steps, final answer and token-exact training data
        (`token_ids`, `loss_mask`, `logprobs`) and the single `policy_version` that produced them.
        """
        return await _serving(request).rollouts(body)

    @router.get("/weights", response_model=WeightsInfo, tags=["weights"])
    async def get_weights(request: Request) -> WeightsInfo:
        """The policy version and checkpoint currently served."""
        return _serving(request).weights()

    @router.post("/weights", response_model=WeightsInfo, tags=["weights"], responses={**NOT_FOUND, **VERSION_CONFLICT})
    async def load_weights(body: LoadWeightsRequest, request: Request) -> WeightsInfo:
        """Load a checkpoint without a restart; waits for requests in flight so none mixes two versions.
        Paths stay under SCORE_HOME (or SCORE_ALLOWED_PATHS); policy versions only grow."""
        return await _serving(request).load_weights(body)

    return router
