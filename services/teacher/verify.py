"""The `verify` strategy: the first critical error is found by executing, not by asking.

1. The student's trajectory is re-executed (observations recomputed).
2. Walking the act steps in order, the teacher proposes its own next step at each step's prefix. Proposals are
   asked for in rounds of `verify_window` prefixes per trajectory, one batched call per round for all
   trajectories still searching, so prefixes after the first critical error are never proposed (and never
   paid for). `verify_window` 0 proposes every prefix in one round: fewest calls, most teacher tokens.
3. A student step with the teacher's code (same code on the same state) or the same observation once the
   teacher's step is executed after the same prefix is never an error, however it was written. At the first
   step whose effect differs, the teacher continues from the prefix with its own step to a final answer (a
   full rollout); if that answer is the gold one, this is the first critical error and the teacher's step,
   with its observation, is the correction. Otherwise the walk goes on to the next divergent step; none
   succeeding makes the trajectory hard.

The window changes what is spent and how many calls are made, never the outcome: each proposal depends only on
its (task, prefix), and the walk reads them in the same order.

Plans have no observation, so the walk compares act steps only. When no act step's correction reaches the gold
answer, the plan may be the first critical error (the paper's first step is the first thought): the teacher
writes its own plan for the task, and if it differs from the student's and the teacher continues from it to the
gold answer, the plan is the error (step 0) and the teacher's plan the correction. A plan is tried last, so an
act step the teacher can fix is always preferred over rewriting the whole approach.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.schemas.agent import Step
from shared.schemas.teacher import Correction, Cost
from shared.scoring import score_answer_async
from services.teacher.backends import BackendError, Proposal, TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor, same_code, same_effect
from services.teacher.prepare import Prepared, hard, short, triage


@dataclass
class _Search:
    """One trajectory's walk: the act steps still to check, in order, and what the walk has seen so far."""

    prepared: Prepared
    pending: list[int]
    cost: Cost = field(default_factory=lambda: Cost(sandbox_runs=1))
    matched: int = 0
    unusable: int = 0
    tried: list[int] = field(default_factory=list)
    result: Correction | None = None


class VerifyStrategy:
    def __init__(self, backend: TeacherBackend, executor: Executor, config: TeacherConfig) -> None:
        self.backend = backend
        self.executor = executor
        self.config = config

    async def correct(self, prepared: list[Prepared]) -> list[Correction]:
        settled = [triage(p, "verify", self.backend) for p in prepared]
        searches = [
            _Search(p, [k for k, step in enumerate(p.steps) if step.kind == "act"])
            for p, done in zip(prepared, settled) if done is None
        ]
        window = self.config.verify_window or None  # 0: every prefix in the first round
        while active := [s for s in searches if s.result is None]:
            batch = [(s, s.pending[:window]) for s in active]
            jobs = [(s.prepared.item.task, s.prepared.steps[:k]) for s, ks in batch for k in ks]
            try:
                proposals = iter(await self.backend.propose(jobs))
            except BackendError as exc:
                for s in active:
                    s.result = hard(s.prepared, "verify", str(exc), s.cost)
                break
            rounds = []
            for s, ks in batch:
                s.pending = s.pending[len(ks):]
                rounds.append(self._walk(s, [(k, next(proposals)) for k in ks]))
            await asyncio.gather(*rounds)
        located = iter(s.result for s in searches)
        return [done if done is not None else next(located) for done in settled]

    async def _walk(self, search: _Search, proposals: list[tuple[int, Proposal]]) -> None:
        """Check this round's prefixes in order; settle the search when an error is found or nothing is left."""
        task, steps = search.prepared.item.task, search.prepared.steps
        for _, proposal in proposals:
            search.cost = search.cost.add(proposal.cost)
        for k, proposal in proposals:
            teacher = proposal.step
            if teacher is None or teacher.kind != "act" or teacher.parse_error is not None:
                search.unusable += 1  # the teacher wrote no usable step here: nothing to compare against
                continue
            student = steps[k]
            if same_code(teacher, student):
                search.matched += 1
                continue
            if teacher.observation is None:
                teacher = await self.executor.run_after(steps[:k], teacher)
                search.cost = search.cost.add(Cost(sandbox_runs=1))
            if same_effect(teacher, student):
                search.matched += 1
                continue
            if len(search.tried) >= self.config.max_rollouts_per_item:
                search.pending = []
                break
            search.tried.append(k)
            try:
                continuation = await self.backend.continue_from(
                    task, [*steps[:k], teacher], max_turns=self.config.rollout_max_turns
                )
            except BackendError as exc:
                search.result = hard(search.prepared, "verify", str(exc), search.cost)
                return
            search.cost = search.cost.add(continuation.cost.as_rollout()).add(Cost(full_rollouts=1))
            answer = continuation.final_answer
            if answer is not None and (await score_answer_async(answer, task.true_answer)).correct:
                corrected = continuation.steps[k] if len(continuation.steps) > k else teacher
                search.result = self._found(search, k, student, corrected, continuation.steps)
                return
        if not search.pending and not await self._plan_correction(search):
            search.result = hard(search.prepared, "verify", self._hard_reason(search), search.cost)

    async def _plan_correction(self, search: _Search) -> bool:
        """Whether the student's plan is the first critical error (then `search.result` holds its correction):
        the teacher's own plan differs and the teacher reaches the gold answer from it."""
        task, steps = search.prepared.item.task, search.prepared.steps
        if not steps or steps[0].kind != "plan" or len(search.tried) >= self.config.max_rollouts_per_item:
            return False
        try:
            [proposal] = await self.backend.propose([(task, [])])
        except BackendError:
            return False  # the walk's own reason says more than a failed extra call
        search.cost = search.cost.add(proposal.cost)
        plan = proposal.step
        if (plan is None or plan.kind != "plan" or plan.parse_error is not None
                or plan.thought.strip() == steps[0].thought.strip()):
            return False
        search.tried.append(0)
        try:
            continuation = await self.backend.continue_from(task, [plan], max_turns=self.config.rollout_max_turns)
        except BackendError:
            return False
        search.cost = search.cost.add(continuation.cost.as_rollout()).add(Cost(full_rollouts=1))
        answer = continuation.final_answer
        if answer is None or not (await score_answer_async(answer, task.true_answer)).correct:
            return False
        corrected = continuation.steps[0] if continuation.steps and continuation.steps[0].kind == "plan" else plan
        analysis = (f"No act step's correction reaches the gold answer ({search.matched} act steps had the teacher's "
                    f"effect). The teacher's own plan differs from the student's, and continuing from it the teacher "
                    f"reaches the gold answer in {len(continuation.steps)} steps: the plan is the first critical error.")
        search.result = Correction(
            task_id=task.id, strategy="verify", answer_correct=False, first_error_step=0, analysis=analysis,
            corrected_step=corrected, hard=False, cost=search.cost,
        )
        return True

    @staticmethod
    def _found(search: _Search, k: int, student: Step, corrected: Step, episode: list[Step]) -> Correction:
        analysis = (
            f"Steps before {k} have the teacher's effect ({search.matched} act steps checked). Step {k} printed "
            f"{short(student.observation)!r}; the teacher's step there printed {short(corrected.observation)!r}, "
            f"and continuing from it the teacher reaches the gold answer in {len(episode) - k} steps."
        )
        return Correction(
            task_id=search.prepared.item.task.id, strategy="verify", answer_correct=False, first_error_step=k,
            analysis=analysis, corrected_step=corrected, hard=False, cost=search.cost,
        )

    def _hard_reason(self, search: _Search) -> str:
        matched, unusable, tried = search.matched, search.unusable, search.tried
        if not tried and unusable:
            return (f"the teacher wrote no usable step at {unusable} of {matched + unusable} prefixes (malformed "
                    f"or missing) and matched the student's effect at the other {matched}")
        if not tried:
            return (f"no step differs in effect from the teacher's own step ({matched} act steps matched); the "
                    "trajectory ends without the gold answer but no step can be singled out")
        budget = " (rollout budget reached)" if len(tried) >= self.config.max_rollouts_per_item else ""
        return (f"the teacher did not reach the gold answer from any divergent prefix: tried steps "
                f"{', '.join(map(str, tried))}{budget}")
