"""Request handlers of the teacher service. No HTTP here: models in, models out."""

from __future__ import annotations

import asyncio
import logging
import time

from shared.errors import UnavailableError, UnprocessableError
from shared.schemas.rollout import RolloutItem
from shared.schemas.teacher import (
    CorrectionRequest, CorrectionResponse, Cost, JudgementRequest, JudgementResponse, TeacherEpisode,
    TeacherRolloutRequest, TeacherRolloutResponse,
)
from shared.sandbox.process import SandboxError
from services.teacher.backends import BackendError, TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor
from services.teacher.judge import JudgeStrategy
from services.teacher.judgements import JudgementService
from services.teacher.prepare import prepare
from services.teacher.scoring_tokens import TokenScorer
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
        self.scorer = TokenScorer(getattr(backend, "engine", None), backend.model_name)
        self.totals = {"corrections": 0, "hard": 0, "teacher_tokens": 0, "teacher_calls": 0, "full_rollouts": 0,
                       "episodes": 0}

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

    async def rollouts(self, request: TeacherRolloutRequest) -> TeacherRolloutResponse:
        started = time.perf_counter()
        for index, item in enumerate(request.items):
            reason = self.backend.unsupported(item.task)
            if reason is not None:  # refused before any work starts, so no episode is half-run
                raise UnprocessableError(f"items[{index}].task ({item.task.id!r}): {reason}",
                                         param=f"body.items.{index}.task")
        try:
            # Concurrency is bounded where the work happens: the executor's sandbox slots for the expert,
            # the runner's episode slots for a model (whose engine batches the concurrent turns).
            episodes = await asyncio.gather(*(self._episode(item, request.max_turns) for item in request.items))
        except SandboxError as exc:
            raise UnavailableError(f"sandbox unavailable: {exc}") from exc
        except BackendError as exc:  # a teacher server that fails answers nothing usable: retry later
            raise UnavailableError(str(exc)) from exc
        total = Cost()
        for episode in episodes:
            total = total.add(episode.cost)
        self.totals["episodes"] += len(episodes)
        self.totals["teacher_tokens"] += total.teacher_tokens
        self.totals["teacher_calls"] += total.teacher_calls
        log.info("rollouts items=%d finished=%d teacher_tokens=%d duration_ms=%.0f", len(episodes),
                 sum(e.finished for e in episodes), total.teacher_tokens, (time.perf_counter() - started) * 1000)
        return TeacherRolloutResponse(episodes=episodes, cost=total, engine=self.backend.kind)

    async def _episode(self, item: RolloutItem, max_turns: int) -> TeacherEpisode:
        continuation = await self.backend.continue_from(item.task, list(item.prefix_steps), max_turns=max_turns)
        return TeacherEpisode(
            task_id=item.task.id, steps=continuation.steps, final_answer=continuation.final_answer,
            finished=continuation.final_answer is not None, stop_reason=continuation.stop_reason,
            n_prefix_steps=len(item.prefix_steps), cost=continuation.cost,
        )
