"""What both strategies start from: the student's trajectory re-executed, and whether it already succeeded."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from shared.schemas.teacher import CorrectionItem, Correction, Cost, Strategy
from shared.scoring import score_answer_async
from services.teacher.execution import Executor, Replay


@dataclass
class Prepared:
    item: CorrectionItem
    replay: Replay              # the student's steps with observations recomputed in a fresh sandbox
    answer_correct: bool        # its own final answer already matches the gold answer

    @property
    def steps(self):
        return self.replay.steps


async def prepare(items: list[CorrectionItem], executor: Executor) -> list[Prepared]:
    replays = await asyncio.gather(*(executor.replay(item.steps) for item in items))
    prepared = []
    for item, replay in zip(items, replays):
        correct = (replay.final_answer is not None
                   and (await score_answer_async(replay.final_answer, item.task.true_answer)).correct)
        prepared.append(Prepared(item, replay, correct))
    return prepared


def nothing_to_correct(prepared: Prepared, strategy: Strategy) -> Correction:
    """A trajectory that reaches the gold answer has no critical error; it is kept as it is."""
    return Correction(
        task_id=prepared.item.task.id, strategy=strategy, answer_correct=True, first_error_step=None,
        analysis="The trajectory's final answer matches the gold answer; there is nothing to correct.",
        hard=False, cost=Cost(sandbox_runs=1),
    )


def triage(prepared: Prepared, strategy: Strategy, backend) -> Correction | None:
    """The answer when no search is needed: the trajectory already succeeded, or the backend cannot help."""
    if prepared.answer_correct:
        return nothing_to_correct(prepared, strategy)
    reason = backend.unsupported(prepared.item.task)
    if reason is not None:
        return hard(prepared, strategy, reason, Cost(sandbox_runs=1))
    return None


def hard(prepared: Prepared, strategy: Strategy, reason: str, cost: Cost, analysis: str = "") -> Correction:
    return Correction(
        task_id=prepared.item.task.id, strategy=strategy, answer_correct=prepared.answer_correct,
        first_error_step=None, analysis=analysis, hard=True, reason=reason, cost=cost,
    )


def short(text: str | None, limit: int = 120) -> str:
    """An observation cut to one readable line for analyses."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
