"""The `verify` strategy: the first critical error is found by executing, not by asking.

1. The student's trajectory is re-executed (observations recomputed).
2. At every act step's prefix the teacher proposes its own next step — one batched call for all prefixes of
   all items.
3. Steps are walked in order. A student step with the teacher's code (same code on the same state) or the
   same observation once the teacher's step is executed after the same prefix is never an error, however
   it was written. At the first step whose effect differs, the teacher continues from the prefix with its
   own step to a final answer (a full rollout); if that answer is the gold one, this is the first critical
   error and the teacher's step, with its observation, is the correction. Otherwise the walk goes on to the
   next divergent step; none succeeding makes the trajectory hard.

Plan steps have no observation: they are never the critical error here. A plan's consequences show in the
act steps after it, and a correction replaces an act step.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from shared.schemas.agent import Step
from shared.schemas.teacher import Correction, Cost
from shared.scoring import score_answer_async
from services.teacher.backends import BackendError, Proposal, TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor, same_code, same_effect
from services.teacher.prepare import Prepared, hard, short, triage


class VerifyStrategy:
    def __init__(self, backend: TeacherBackend, executor: Executor, config: TeacherConfig) -> None:
        self.backend = backend
        self.executor = executor
        self.config = config

    async def correct(self, prepared: list[Prepared]) -> list[Correction]:
        settled = [triage(p, "verify", self.backend) for p in prepared]
        jobs, positions = [], []
        for i, p in enumerate(prepared):
            if settled[i] is not None:
                continue
            for k, step in enumerate(p.steps):
                if step.kind == "act":
                    jobs.append((p.item.task, p.steps[:k]))
                    positions.append((i, k))
        try:
            proposals = await self.backend.propose(jobs)
        except BackendError as exc:
            return [done or hard(p, "verify", str(exc), Cost(sandbox_runs=1)) for p, done in zip(prepared, settled)]
        by_item: dict[int, dict[int, Proposal]] = defaultdict(dict)
        for (i, k), proposal in zip(positions, proposals):
            by_item[i][k] = proposal
        located = iter(await asyncio.gather(*(
            self._locate(p, by_item[i]) for i, p in enumerate(prepared) if settled[i] is None
        )))
        return [done if done is not None else next(located) for done in settled]

    async def _locate(self, prepared: Prepared, proposals: dict[int, Proposal]) -> Correction:
        task, steps = prepared.item.task, prepared.steps
        cost = Cost(sandbox_runs=1)
        for proposal in proposals.values():
            cost = cost.add(proposal.cost)
        matched, unusable, tried = 0, 0, []
        for k in sorted(proposals):
            teacher = proposals[k].step
            if teacher is None or teacher.kind != "act" or teacher.parse_error is not None:
                unusable += 1  # the teacher wrote no usable step here: nothing to compare against
                continue
            student = steps[k]
            if same_code(teacher, student):
                matched += 1
                continue
            if teacher.observation is None:
                teacher = await self.executor.run_after(steps[:k], teacher)
                cost = cost.add(Cost(sandbox_runs=1))
            if same_effect(teacher, student):
                matched += 1
                continue
            if len(tried) >= self.config.max_rollouts_per_item:
                break
            tried.append(k)
            try:
                continuation = await self.backend.continue_from(
                    task, [*steps[:k], teacher], max_turns=self.config.rollout_max_turns
                )
            except BackendError as exc:
                return hard(prepared, "verify", str(exc), cost)
            cost = cost.add(continuation.cost.as_rollout()).add(Cost(full_rollouts=1))
            answer = continuation.final_answer
            if answer is not None and (await score_answer_async(answer, task.true_answer)).correct:
                corrected = continuation.steps[k] if len(continuation.steps) > k else teacher
                return self._found(prepared, k, student, corrected, matched, continuation.steps, cost)
        return hard(prepared, "verify", self._hard_reason(matched, unusable, tried), cost)

    @staticmethod
    def _found(prepared: Prepared, k: int, student: Step, corrected: Step, matched: int,
               episode: list[Step], cost: Cost) -> Correction:
        analysis = (
            f"Steps before {k} have the teacher's effect ({matched} act steps checked). Step {k} printed "
            f"{short(student.observation)!r}; the teacher's step there printed {short(corrected.observation)!r}, "
            f"and continuing from it the teacher reaches the gold answer in {len(episode) - k} steps."
        )
        return Correction(
            task_id=prepared.item.task.id, strategy="verify", answer_correct=False, first_error_step=k,
            analysis=analysis, corrected_step=corrected, hard=False, cost=cost,
        )

    def _hard_reason(self, matched: int, unusable: int, tried: list[int]) -> str:
        if not tried and unusable:
            return (f"the teacher wrote no usable step at {unusable} of {matched + unusable} prefixes (malformed "
                    f"or missing) and matched the student's effect at the other {matched}")
        if not tried:
            return (f"no step differs in effect from the teacher's own step ({matched} act steps matched); the "
                    "trajectory ends without the gold answer but no step can be singled out")
        budget = " (rollout budget reached)" if len(tried) >= self.config.max_rollouts_per_item else ""
        return (f"the teacher did not reach the gold answer from any divergent prefix: tried steps "
                f"{', '.join(map(str, tried))}{budget}")
