"""The `judge` strategy: the paper's way, for instruction-following teachers.

Prompt 1 shows the task, its gold answer and the numbered steps and asks for a JSON verdict (answer
correct?, first error step, analysis, suggestion). Prompt 2 sees only the verified prefix, the faulty step
and the analysis, and writes the corrected step in the agent format; it is executed after the prefix for
its observation. Every model output is parsed defensively and retried a bounded number of times; what stays
unusable — unreadable verdicts, malformed steps, a step that gives the gold answer away — makes the
trajectory `hard` with the reason, never an error response.

The scripted expert answers the same strategy deterministically: the first act step that does not advance
what the observations establish (`expert_progress`) is the error, and the expert's own next step there is
the correction.
"""

from __future__ import annotations

import asyncio
import json
import re

from shared.agent.format import parse_act
from shared.schemas.agent import Step, Task
from shared.schemas.teacher import Correction, Cost
from shared.tasks.expert import expert_next_step, expert_progress
from shared.agent import teacher_prompts as prompts
from services.teacher.backends import BackendError, ExpertBackend, TeacherBackend
from services.teacher.config import TeacherConfig
from services.teacher.execution import Executor
from services.teacher.parsing import ParseFailure, parse_judgement
from services.teacher.prepare import Prepared, hard, short, triage


def leaked_answer(step: Step, task: Task, prefix: list[Step]) -> str | None:
    """The gold answer (an alias) if the step's own thought or code states it before anything showed it.

    An answer the prefix's observations (or the question) already contain is fair to use: a kb search shows
    the answer, an arithmetic step prints the final value before it is given as the answer.
    """
    written = f"{step.thought}\n{step.code or ''}"
    shown = "\n".join([task.question, *(s.observation or "" for s in prefix)])
    for alias in task.answers():
        alias = alias.strip()
        if not alias:
            continue
        pattern = re.compile(rf"(?<![\w.]){re.escape(alias)}(?![\w])", re.IGNORECASE)
        if pattern.search(written) and not pattern.search(shown):
            return alias
    return None


def _first_act_from(steps: list[Step], k: int) -> int | None:
    """Plans are never the critical error: a verdict naming one moves to the first act step after it."""
    return next((i for i in range(k, len(steps)) if steps[i].kind == "act"), None)


class JudgeStrategy:
    def __init__(self, backend: TeacherBackend, executor: Executor, config: TeacherConfig) -> None:
        self.backend = backend
        self.executor = executor
        self.config = config

    async def correct(self, prepared: list[Prepared]) -> list[Correction]:
        judge_one = self._model_judge if self.backend.has_model else self._expert_judge
        settled = [triage(p, "judge", self.backend) for p in prepared]
        judged = iter(await asyncio.gather(*(judge_one(p) for p, done in zip(prepared, settled) if done is None)))
        return [done if done is not None else next(judged) for done in settled]

    def _sampling(self, attempt: int) -> dict:
        """The first attempt samples as configured (greedy by default); retries sample, or they would repeat it."""
        if attempt == 0:
            return {"seed": 0, "temperature": None}
        return {"seed": attempt, "temperature": max(self.config.temperature, self.config.retry_temperature)}

    # ---- the scripted expert -----------------------------------------------------------------------------
    async def _expert_judge(self, prepared: Prepared) -> Correction:
        task, steps = prepared.item.task, prepared.steps
        cost = Cost(sandbox_runs=1)
        progress = -1
        for k, step in enumerate(steps):
            if step.kind != "act":
                continue
            after = expert_progress(task, steps[: k + 1])
            gave_answer = "final_answer_print" in (step.code or "") and not (step.observation or "").startswith("Error")
            if after > progress and not gave_answer:
                progress = after
                continue
            expected = expert_next_step(task, steps[:k])
            corrected = await self.executor.run_after(steps[:k], expected)
            cost = cost.add(Cost(sandbox_runs=1))
            what = "gave a wrong final answer" if gave_answer else "did not establish anything new"
            analysis = (f"Step {k} {what} (it printed {short(step.observation)!r}). "
                        f"The right step: {expected.thought}")
            cost = cost.add(self._expert_cost(task, steps, k, analysis, expected))
            return Correction(
                task_id=task.id, strategy="judge", answer_correct=False, first_error_step=k, analysis=analysis,
                corrected_step=corrected, hard=False, cost=cost,
            )
        return hard(prepared, "judge", "every step advances the solution, but the trajectory ends before the gold "
                    "answer (it ran out of turns)", cost)

    def _expert_cost(self, task, steps, k: int, analysis: str, expected) -> Cost:
        """What a model judge would have spent for this verdict: the judge prompt and a JSON verdict, then the
        corrected step after the prefix (counted in the teacher's tokenizer)."""
        backend = self.backend
        if not isinstance(backend, ExpertBackend):
            return Cost()
        verdict = json.dumps({"answer_correct": False, "first_error_step": k, "analysis": analysis, "suggestion": expected.thought})
        return (backend.text_cost(prompts.judge_messages(task, steps), verdict).as_judgement()
                .add(backend.step_cost(task, steps[:k], expected)))

    # ---- a teacher model ---------------------------------------------------------------------------------
    async def _model_judge(self, prepared: Prepared) -> Correction:
        cost = Cost(sandbox_runs=1)
        try:
            return await self._judge_with_model(prepared, cost)
        except BackendError as exc:
            return hard(prepared, "judge", f"the teacher model failed: {exc}", cost)

    async def _judge_with_model(self, prepared: Prepared, cost: Cost) -> Correction:
        task, steps = prepared.item.task, prepared.steps
        verdict, failures = None, []
        for attempt in range(self.config.judge_attempts):
            reply = await self.backend.chat(prompts.judge_messages(task, steps), max_tokens=self.config.max_judge_tokens,
                                            json_schema=prompts.JUDGE_SCHEMA, **self._sampling(attempt))
            cost = cost.add(reply.cost.as_judgement())
            parsed = parse_judgement(reply.text, len(steps))
            if isinstance(parsed, ParseFailure):
                failures.append(parsed.reason)
                continue
            if parsed.first_error_step is None:
                failures.append("the judge named no faulty step, but the final answer is wrong")
                continue
            verdict = parsed
            break
        if verdict is None:
            return hard(prepared, "judge", f"no usable verdict after {self.config.judge_attempts} attempts: "
                        f"{failures[-1]}", cost)
        k = _first_act_from(steps, verdict.first_error_step)
        if k is None:
            return hard(prepared, "judge", "the judge named the plan, and no act step follows it", cost,
                        analysis=verdict.analysis)
        return await self._write_correction(prepared, k, verdict.analysis, verdict.suggestion, cost)

    async def _write_correction(self, prepared: Prepared, k: int, analysis: str, suggestion: str,
                                cost: Cost) -> Correction:
        task, steps = prepared.item.task, prepared.steps
        messages = prompts.correction_messages(task, steps[:k], steps[k], analysis, suggestion)
        failures = []
        for attempt in range(self.config.judge_attempts):
            reply = await self.backend.chat(messages, max_tokens=self.config.max_step_tokens, **self._sampling(attempt))
            cost = cost.add(reply.cost)
            step = parse_act(reply.text)
            if step.parse_error is not None:
                failures.append(f"the corrected step is malformed ({step.parse_error})")
                continue
            if leaked_answer(step, task, steps[:k]) is not None:
                failures.append("the corrected step states the gold answer before any observation showed it")
                continue
            executed = await self.executor.run_after(steps[:k], step)
            cost = cost.add(Cost(sandbox_runs=1))
            return Correction(
                task_id=task.id, strategy="judge", answer_correct=False, first_error_step=k,
                analysis=analysis, corrected_step=executed, hard=False, cost=cost,
            )
        return hard(prepared, "judge", f"no usable corrected step after {self.config.judge_attempts} attempts: "
                    f"{failures[-1]}", cost, analysis=analysis)
