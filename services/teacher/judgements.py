"""`POST /v1/judgements`: answer equivalence and step equivalence, programmatic first, cached.

Answers: `shared.scoring` (math-verify, normalised exact match, aliases); the teacher model is asked only
when the item says so and the scorers said no. Steps: both steps executed in sandboxes rebuilt from the
same prefix, equal observations meaning the same action (the RL key-step reward); or the teacher model's
verdict when asked. Results are cached by a hash of the item's content (bounded LRU).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

from shared.schemas.teacher import (
    AnswerJudgementItem,
    Cost,
    Judgement,
    JudgementRequest,
    JudgementResponse,
    StepJudgementItem,
)
from shared.scoring import score_answer_async
from shared.errors import UnprocessableError
from shared.agent import teacher_prompts as prompts
from services.teacher.backends import BackendError, TeacherBackend
from services.teacher.execution import Executor, same_effect
from services.teacher.parsing import parse_equivalence

_EQUIVALENCE_TOKENS = 128


class LRUCache:
    """A bounded mapping that forgets the least recently used entry first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, Judgement] = OrderedDict()
        self.hits = 0

    def get(self, key: str) -> Judgement | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
            self.hits += 1
        return value

    def put(self, key: str, value: Judgement) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def content_key(item, backend_name: str) -> str:
    """The same question to the same backend gets the same answer: hash of both."""
    payload = f"{backend_name}\n{item.model_dump_json()}".encode()
    return hashlib.sha256(payload).hexdigest()


class JudgementService:
    def __init__(self, backend: TeacherBackend, executor: Executor, *, cache_size: int) -> None:
        self.backend = backend
        self.executor = executor
        self.cache = LRUCache(cache_size)
        self.totals: dict[str, int] = {"answer": 0, "step": 0}

    async def judge(self, request: JudgementRequest) -> JudgementResponse:
        for index, item in enumerate(request.items):
            if item.use_teacher and not self.backend.has_model:
                raise UnprocessableError(
                    f"use_teacher needs a teacher model; this service runs the {self.backend.kind} backend",
                    param=f"body.items.{index}.use_teacher",
                )
        results = await asyncio.gather(*(self._one(item) for item in request.items))
        cost = Cost()
        for _, item_cost in results:
            cost = cost.add(item_cost)
        return JudgementResponse(judgements=[j for j, _ in results], cost=cost)

    async def _one(self, item) -> tuple[Judgement, Cost]:
        key = content_key(item, f"{self.backend.kind}:{self.backend.model_name}")
        cached = self.cache.get(key)
        if cached is not None:
            return cached.model_copy(update={"cached": True}), Cost()
        if isinstance(item, AnswerJudgementItem):
            judgement, cost = await self._answer(item)
        else:
            judgement, cost = await self._step(item)
        self.totals[item.kind] += 1
        self.cache.put(key, judgement)
        return judgement, cost

    async def _answer(self, item: AnswerJudgementItem) -> tuple[Judgement, Cost]:
        # Bounded (a scorer process with a time limit) and off the event loop while it waits.
        score = await score_answer_async(item.prediction, item.true_answer)
        programmatic = Judgement(kind="answer", equivalent=score.correct, method=score.method, f1=score.f1)
        if score.correct or not item.use_teacher or item.prediction is None:
            return programmatic, Cost()
        gold = item.true_answer if isinstance(item.true_answer, list) else [str(item.true_answer)]
        messages = prompts.answer_equivalence_messages(item.question, item.prediction, [str(g) for g in gold])
        return await self._ask_teacher(messages, programmatic)

    async def _step(self, item: StepJudgementItem) -> tuple[Judgement, Cost]:
        prefix, reference = item.steps[: item.index], item.steps[item.index]
        reference_run, candidate_run = await asyncio.gather(
            self.executor.run_after(prefix, reference), self.executor.run_after(prefix, item.candidate)
        )
        executed = Judgement(
            kind="step", equivalent=same_effect(reference_run, candidate_run), method="execution",
            reference_observation=reference_run.observation, candidate_observation=candidate_run.observation,
        )
        cost = Cost(sandbox_runs=2)
        if not item.use_teacher:
            return executed, cost
        messages = prompts.step_equivalence_messages(item.task, prefix, reference_run, candidate_run)
        judgement, teacher_cost = await self._ask_teacher(messages, executed)
        return judgement, cost.add(teacher_cost)

    async def _ask_teacher(self, messages: list[dict], fallback: Judgement) -> tuple[Judgement, Cost]:
        """The teacher's verdict; when it fails or says nothing readable, the programmatic one with the reason."""
        try:
            reply = await self.backend.chat(messages, max_tokens=_EQUIVALENCE_TOKENS,
                                            json_schema=prompts.EQUIVALENCE_SCHEMA)
        except BackendError as exc:
            return fallback.model_copy(update={"detail": f"teacher unavailable ({exc}); programmatic verdict"}), Cost()
        verdict, reason = parse_equivalence(reply.text)
        if verdict is None:
            detail = f"teacher reply unreadable ({reason}); programmatic verdict"
            return fallback.model_copy(update={"detail": detail}), reply.cost.as_judgement()
        return (fallback.model_copy(update={"equivalent": verdict, "method": "teacher", "detail": reason}),
                reply.cost.as_judgement())
