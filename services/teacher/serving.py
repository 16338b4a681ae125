"""Request handlers of the teacher service. No HTTP here: models in, models out."""

from __future__ import annotations

import logging
import time

from shared.errors import UnavailableError
from shared.schemas.teacher import CorrectionRequest, CorrectionResponse, Cost, JudgementRequest, JudgementResponse
from shared.tools.sandbox import SandboxError
from services.teacher.backends import TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor
from services.teacher.judge import JudgeStrategy
from services.teacher.judgements import JudgementService
from services.teacher.prepare import prepare
from services.teacher.verify import VerifyStrategy

log = logging.getLogger("score.teacher")


class TeacherServing:
    def __init__(self, *, backend: TeacherBackend, executor: Executor, config: TeacherConfig) -> None:
        self.backend = backend
        self.executor = executor
        self.strategies = {
            "verify": VerifyStrategy(backend, executor, config),
            "judge": JudgeStrategy(backend, executor, config),
        }
        self.judgements = JudgementService(backend, executor, cache_size=config.judgement_cache_size)
        self.totals = {"corrections": 0, "hard": 0, "teacher_tokens": 0, "teacher_calls": 0, "full_rollouts": 0}

    async def corrections(self, request: CorrectionRequest) -> CorrectionResponse:
        started = time.perf_counter()
        try:
            prepared = await prepare(request.items, self.executor)
            corrections = await self.strategies[request.strategy].correct(prepared)
        except SandboxError as exc:  # the host refused an interpreter process: retry later, not a bug
            raise UnavailableError(f"sandbox unavailable: {exc}") from exc
        total = Cost()
        for correction in corrections:
            total = total.add(correction.cost)
        hard = sum(c.hard for c in corrections)
        self.totals["corrections"] += len(corrections)
        self.totals["hard"] += hard
        self.totals["teacher_tokens"] += total.teacher_tokens
        self.totals["teacher_calls"] += total.teacher_calls
        self.totals["full_rollouts"] += total.full_rollouts
        log.info("corrections strategy=%s items=%d hard=%d rollouts=%d teacher_tokens=%d duration_ms=%.0f",
                 request.strategy, len(corrections), hard, total.full_rollouts, total.teacher_tokens,
                 (time.perf_counter() - started) * 1000)
        return CorrectionResponse(corrections=corrections, cost=total, engine=self.backend.kind)

    async def judge(self, request: JudgementRequest) -> JudgementResponse:
        try:
            return await self.judgements.judge(request)
        except SandboxError as exc:
            raise UnavailableError(f"sandbox unavailable: {exc}") from exc
