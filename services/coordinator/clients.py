"""HTTP clients of the model services, with the wire models of shared/schemas on both sides.

Connection errors and 5xx/429 are retried with backoff (the services may be restarting); a 4xx is the
caller's mistake and raises at once with the service's message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from pydantic import BaseModel

from shared.http_errors import TRANSIENT_STATUSES, error_message
from shared.observability import traced_async_client
from shared.schemas.agent import Step, Task
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.logprobs import LogprobRequest, LogprobResponse
from shared.schemas.rl import RLSessionCreate, RLSessionInfo, RLStepRequest, RLStepResponse
from shared.schemas.rollout import RolloutItem, RolloutRequest, RolloutResponse
from shared.schemas.sampling import SamplingParams
from shared.schemas.teacher import (
    CorrectionItem, CorrectionRequest, CorrectionResponse, JudgementRequest, JudgementResponse,
    TeacherRolloutRequest, TeacherRolloutResponse,
)
from shared.schemas.training import JobEvent, JobInfo, JobRequest
from shared.schemas.weights import LoadWeightsRequest, WeightsInfo
from shared.trainer_jobs import await_job

logger = logging.getLogger("score.coordinator.clients")

RETRIES = 5


class ServiceError(RuntimeError):
    """A model service refused or failed a call; the message says which service, endpoint and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceClient:
    def __init__(self, name: str, base_url: str, *, token: str | None, timeout_s: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.name, self.base_url = name, base_url.rstrip("/")
        # Each call carries the caller's request and run ids, so the model services' logs join up with ours.
        self.http = traced_async_client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    async def close(self) -> None:
        await self.http.aclose()

    async def call(self, method: str, path: str, body: BaseModel | None = None, *, ok=(200, 201),
                   params: dict | None = None) -> httpx.Response:
        payload = None if body is None else body.model_dump(mode="json", exclude_none=True)
        for attempt in range(RETRIES + 1):
            try:
                response = await self.http.request(method, path, json=payload, params=params)
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise ServiceError(f"{self.name} at {self.base_url} unreachable ({method} {path}): {exc!r}") from exc
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
                continue
            if response.status_code in ok:
                return response
            if response.status_code in TRANSIENT_STATUSES and attempt < RETRIES:
                logger.warning("%s %s %s -> %d, retrying", self.name, method, path, response.status_code)
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
                continue
            message = error_message(response)[:1000]
            raise ServiceError(f"{self.name} {method} {path} -> {response.status_code}: {message}",
                               status=response.status_code)
        raise AssertionError("unreachable")



class StudentClient(ServiceClient):
    async def rollouts(self, items: list[RolloutItem], *, n: int, max_turns: int, sampling: SamplingParams) -> RolloutResponse:
        request = RolloutRequest(items=items, n=n, max_turns=max_turns, sampling=sampling)
        return RolloutResponse.model_validate((await self.call("POST", "/v1/rollouts", request)).json())

    async def weights(self) -> WeightsInfo:
        return WeightsInfo.model_validate((await self.call("GET", "/v1/weights")).json())

    async def load(self, checkpoint: Checkpoint, *, policy_version: int) -> WeightsInfo:
        request = LoadWeightsRequest.serving(checkpoint, policy_version)
        return WeightsInfo.model_validate((await self.call("POST", "/v1/weights", request)).json())


class TeacherClient(ServiceClient):
    async def corrections(self, items: list[CorrectionItem], strategy: str) -> CorrectionResponse:
        request = CorrectionRequest(items=items, strategy=strategy)
        return CorrectionResponse.model_validate((await self.call("POST", "/v1/corrections", request)).json())

    async def judgements(self, request: JudgementRequest) -> JudgementResponse:
        return JudgementResponse.model_validate((await self.call("POST", "/v1/judgements", request)).json())

    async def solve(self, tasks: list[Task], *, max_turns: int,
                    prefixes: list[list[Step]] | None = None) -> TeacherRolloutResponse:
        items = [RolloutItem(task=task, prefix_steps=(prefixes[i] if prefixes else [])) for i, task in enumerate(tasks)]
        request = TeacherRolloutRequest(items=items, max_turns=max_turns)
        return TeacherRolloutResponse.model_validate((await self.call("POST", "/v1/rollouts", request)).json())


    async def engine(self) -> str:
        """The teacher's engine (`expert`, `transformers`, `openai`), from its /ready."""
        return str((await self.call("GET", "/ready")).json().get("engine", ""))

    async def logprobs(self, request: LogprobRequest) -> LogprobResponse:
        return LogprobResponse.model_validate((await self.call("POST", "/v1/logprobs", request)).json())


class TrainerClient(ServiceClient):
    async def create_job(self, request: JobRequest) -> JobInfo:
        return JobInfo.model_validate((await self.call("POST", "/v1/jobs", request)).json())

    async def await_job(self, job_id: str, *,
                        on_event: Callable[[JobEvent], Awaitable[None]] | None = None) -> JobInfo:
        """The succeeded job once it has ended, following its event stream; JobFailed if it did not succeed."""
        return await await_job(self.http, job_id, on_event=on_event)

    async def create_session(self, request: RLSessionCreate) -> RLSessionInfo:
        return RLSessionInfo.model_validate((await self.call("POST", "/v1/rl/sessions", request)).json())

    async def session(self, session_id: str) -> RLSessionInfo:
        return RLSessionInfo.model_validate((await self.call("GET", f"/v1/rl/sessions/{session_id}")).json())

    async def step(self, session_id: str, request: RLStepRequest) -> RLStepResponse:
        response = await self.call("POST", f"/v1/rl/sessions/{session_id}/steps", request)
        return RLStepResponse.model_validate(response.json())


class Services:
    """The three model services one run talks to."""

    def __init__(self, *, student_url: str, teacher_url: str, trainer_url: str, token: str | None = None,
                 tokens: dict[str, str | None] | None = None) -> None:
        """`token` for all three, or `tokens` by URL field name (`student_url`, ...) where they differ."""
        tokens = tokens or {}
        self.student = StudentClient("student", student_url, token=tokens.get("student_url", token))
        self.teacher = TeacherClient("teacher", teacher_url, token=tokens.get("teacher_url", token))
        self.trainer = TrainerClient("trainer", trainer_url, token=tokens.get("trainer_url", token))

    async def close(self) -> None:
        for client in (self.student, self.teacher, self.trainer):
            await client.close()
