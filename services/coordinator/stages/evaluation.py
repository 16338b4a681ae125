"""Held-out evaluation of a policy: the student after a stage, or the teacher once per run.

A student checkpoint the trainer published under this SCORE_HOME also gets the result in its model card
(`shared/model_card.py`), keyed by run and policy, so evaluating it again updates the row."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.records import add_spend, trajectory_spend
from services.coordinator.stages.base import Stage, chunks
from shared.model_card import Evaluation, record_evaluation
from shared.schemas.rollout import RolloutItem
from shared.schemas.sampling import SamplingParams
from shared.scoring import score_answer_async

CHUNK = 16


class EvalStage(Stage):
    queue = "eval"

    def __init__(self, label: str, *, after: str | None = None) -> None:
        self.label = label
        self.name = f"eval_{label}"
        self.after = after  # the stage whose policy is measured (skipped with it)

    def enabled(self, ctx: RunContext) -> bool:
        if self.label == "teacher":
            return ctx.config.eval.teacher
        if self.label == "baseline":
            return ctx.config.baseline.enabled
        if self.label == "rl":
            return ctx.config.rl.steps > 0
        if self.label == "baseline_tokens":
            return ctx.config.baseline.equal_tokens
        if self.label == "control":
            return ctx.config.control.enabled
        if self.label == "opd":
            return ctx.config.opd.enabled
        if self.label == "score_opd":
            return ctx.config.score_opd.enabled and ctx.config.rl.steps > 0
        return True

    async def skip_reason(self, ctx: RunContext) -> str | None:
        # A policy is measured only if its stage ran: a skipped RL stage leaves the SFT policy, which must not be
        # reported again under the name `rl`.
        if self.after is None:
            return None
        if (await ctx.store.stage(ctx.run_id, self.after)).state == "skipped":
            return f"{self.after} did not run"
        trains = self.after not in ("rl", "score_opd")  # the others publish their policy through an SFT job
        if trains and f"{self.after}_optimizer_steps" not in (await ctx.store.info(ctx.run_id)).counters:
            return f"{self.after} trained nothing"
        return None

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        return [self.item(ctx, f"{self.label}-{i:05d}", task_ids=[t.id for t in chunk])
                for i, chunk in enumerate(chunks(ctx.pools.eval, CHUNK))]

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        tasks_by_id = ctx.pools.by_id()
        tasks = [tasks_by_id[i] for i in item.payload["task_ids"]]
        params = ctx.config.eval
        if self.label == "teacher":
            episodes = (await ctx.services.teacher.solve(tasks, max_turns=params.max_turns)).episodes
            tokens = [e.cost.teacher_tokens for e in episodes]
            spent = add_spend(*(trajectory_spend("eval_teacher", e.cost) for e in episodes))
            version = None
        else:
            version = await ctx.ensure_student()
            sampling = SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens, seed=0)
            response = await ctx.services.student.rollouts([RolloutItem(task=t) for t in tasks], n=1,
                                                           max_turns=params.max_turns, sampling=sampling)
            episodes = response.episodes
            tokens = [sum(e.loss_mask) for e in episodes]
            spent = {}
            version = response.policy_version
        correct = [(await score_answer_async(e.final_answer, t.true_answer)).correct for t, e in zip(tasks, episodes)]
        return {
            "n": len(tasks), "solved": sum(correct), "answered": sum(e.final_answer is not None for e in episodes),
            "turns": sum(sum(s.kind == "act" for s in e.steps) for e in episodes), "tokens": sum(tokens),
            "policy_version": version, "correct": dict(zip([t.id for t in tasks], correct)),
            "teacher_spend": {k: v.model_dump() for k, v in spent.items()},
        }

    async def finish(self, ctx: RunContext) -> None:
        results = list((await ctx.store.results(ctx.run_id, self.name)).values())
        results = [r for r in results if "n" in r]  # dead-lettered chunks carry only their error
        n = sum(r["n"] for r in results)
        summary = {
            "success": sum(r["solved"] for r in results) / n if n else 0.0, "n": n,
            "solved": sum(r["solved"] for r in results),
            "answered": sum(r["answered"] for r in results) / n if n else 0.0,
            "mean_turns": sum(r["turns"] for r in results) / n if n else 0.0,
            "mean_tokens": sum(r["tokens"] for r in results) / n if n else 0.0,
            "policy_version": next((r["policy_version"] for r in results), None),
            # Per-task outcomes, so any figure can be recomputed (and intervals or paired tests drawn from them).
            "outcomes": {task_id: int(ok) for r in results for task_id, ok in sorted(r.get("correct", {}).items())},
        }
        teacher = add_spend(*(r.get("teacher_spend") or {} for r in results))
        if teacher:
            summary["teacher_spend"] = {k: v.model_dump() for k, v in teacher.items()}
        # Every chunk ran on the run's student checkpoint (ensure_student); none before the first training stage.
        served = None if self.label == "teacher" else (await ctx.store.pointers(ctx.run_id)).student_checkpoint
        summary["checkpoint"] = served.checkpoint.path if served else None
        await ctx.store.set_eval(ctx.run_id, self.label, summary)
        if served is not None:
            await self._add_to_card(ctx, Path(served.checkpoint.path), summary)
        await ctx.store.event(ctx.run_id, "eval", f"{ctx.config.tasks.eval_set} success of {self.label}: "
                              f"{summary['success']:.1%} ({summary['solved']}/{n})", stage=self.name,
                              data={"label": self.label, **summary})

    async def _add_to_card(self, ctx: RunContext, directory: Path, summary: dict) -> None:
        """Record the result in the checkpoint's model card: only a folder under this SCORE_HOME's checkpoints
        (a trainer with another SCORE_HOME published it elsewhere), and a card that cannot be written is logged,
        never a failed stage."""
        root = ctx.checkpoints_dir
        if root is None or not directory.resolve().is_relative_to(root.resolve()) or not directory.is_dir():
            ctx.log("%s: %s is not a checkpoint under %s; its model card is left as it is", self.name, directory, root)
            return
        evaluation = Evaluation(run=ctx.run_id, label=self.label, solved=summary["solved"], n=summary["n"],
                                policy_version=summary["policy_version"], tasks=ctx.config.tasks.eval_set)
        try:
            card = await asyncio.to_thread(record_evaluation, directory, evaluation)
        except OSError as exc:
            ctx.log("%s: model card of %s not updated: %s", self.name, directory, exc)
            return
        await ctx.store.event(ctx.run_id, "log", f"{self.name}: {ctx.config.tasks.eval_set} result added to {card}",
                              stage=self.name, data={"card": str(card)})
