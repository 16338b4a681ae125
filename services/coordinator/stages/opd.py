"""On-policy distillation (OPD) from the cold-start checkpoint: a reference arm beside SCoRe.

Each step is one work item, chained like SCoRe-RL's: the student samples whole episodes on the training tasks
SCoRe used (its SFT and RL pools, in order), the teacher model scores every token the student wrote
(`POST /v1/logprobs`, refused unless the two share a tokenizer), and the trainer applies a GRPO-style update
whose per-token advantage is -coef * (log p_student - log p_teacher) (plus the task reward's group advantage
with `opd.task_reward`). At equal teacher tokens the arm stops after the step whose scored tokens reach SCoRe's
spend after cold start; the steps left settle at once as `budget spent`. With `max_staleness` >= 1 the steps are
streamed: the next step's batch is sampled and scored during this one's update (`stages/ahead.py`).
"""

from __future__ import annotations

import time

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.records import add_spend, records_of
from services.coordinator.stages.ahead import BatchesAhead, StepBatch
from services.coordinator.stages.base import Stage
from services.coordinator.stages.baseline import score_teacher_spend, spend_tokens
from services.coordinator.stages.rl import session_id, teacher_scored, without_log_probabilities
from services.coordinator.stages.training import with_run_trackers
from shared.schemas.rl import RLSample, RLSessionCreate, RLStepRequest, RolloutGroup
from shared.schemas.rollout import RolloutItem
from shared.schemas.sampling import SamplingParams
from shared.schemas.trajectories import TeacherSpend
from shared.scoring import score_answer_async

PURPOSE = "opd_scoring"


class ScoredBatch(StepBatch):
    """One step's student episodes with the teacher's scores: what the trainer steps on."""

    groups: list[RolloutGroup]
    correct: list[bool]
    teacher: dict[str, TeacherSpend]  # purpose -> spend of the scoring
    scored_tokens: int
    seconds: dict[str, float]  # sampling, scoring


class OPDStage(Stage):
    name, queue = "opd", "rl"

    def __init__(self) -> None:
        self._ahead = BatchesAhead(self.name, ScoredBatch)

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.opd.enabled

    async def skip_reason(self, ctx: RunContext) -> str | None:
        if reason := await without_log_probabilities(ctx):
            return reason
        if (await ctx.store.pointers(ctx.run_id)).bc_init_checkpoint is None:
            return "no cold-start checkpoint to start from"
        return None if self.tasks(ctx) else "no training tasks (tasks.n_train and tasks.n_rl are 0)"

    def tasks(self, ctx: RunContext) -> list:
        return [*ctx.pools.train, *ctx.pools.rl]

    async def budget(self, ctx: RunContext) -> int | None:
        if not ctx.config.opd.equal_tokens:
            return None
        return score_teacher_spend(records_of(await ctx.store.results(ctx.run_id, "mps")),
                                   await ctx.store.results(ctx.run_id, "rl"))

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        cold_start = (await ctx.store.pointers(ctx.run_id)).bc_init_checkpoint
        version = await ctx.use_student(cold_start, label="opd")
        await ctx.services.trainer.create_session(RLSessionCreate(
            session_id=session_id(ctx, self.name), base=cold_start.path, output_name=session_id(ctx, self.name),
            initial_policy_version=version, hyperparameters=with_run_trackers(ctx, ctx.config.opd.hyperparameters),
        ))
        return [self.item(ctx, "step-00000", step=0)]

    def total(self, ctx: RunContext, items: list[WorkItem]) -> int:
        return ctx.config.opd.steps if items else 0

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        step, params, sid = int(item.payload["step"]), ctx.config.opd, session_id(ctx, self.name)
        session = await ctx.services.trainer.session(sid)
        if session.steps > step:  # applied before a crash lost its result: adopt what the trainer published
            await self._ahead.drop(ctx)
            await ctx.use_student(session.checkpoint, version=session.policy_version, label=f"opd step {step + 1}")
            return {"step": step, "metrics": session.last_metrics, "policy_version": session.policy_version,
                    "recovered": True}
        budget = await self.budget(ctx)
        spent = spend_tokens(add_spend(*(r.get("teacher_spend") or {} for r in
                                         (await ctx.store.results(ctx.run_id, self.name)).values())))
        if budget is not None and spent >= budget:
            return {"step": step, "skipped": "budget spent", "budget": budget, "spent": spent}
        await ctx.ensure_student()
        curve = {"before": await self.measure(ctx)} if params.eval_every and step == 0 else {}

        started = time.perf_counter()
        batch = await self._ahead.take(ctx, step) or await self.sampled_and_scored(ctx, step)
        spent_now = spent + spend_tokens(batch.teacher)
        last = step + 1 == params.steps or (budget is not None and spent_now >= budget)
        # Streaming (max_staleness >= 1): the next step's batch is sampled and scored during this update, once this
        # step is known not to be the last, so no teacher token is spent on a batch nothing trains on.
        ahead = params.hyperparameters.max_staleness >= 1 and not last
        updating = time.perf_counter()
        result, waited = await self._ahead.update_while_preparing(
            ctx, ctx.services.trainer.step(sid, RLStepRequest(groups=batch.groups, step_id=f"{sid}-{step}")),
            (lambda: self.sampled_and_scored(ctx, step + 1, ahead=True)) if ahead else None)
        await ctx.use_student(result.checkpoint, version=result.policy_version, label=f"opd step {step + 1}")
        summary = {
            "step": step, "metrics": result.metrics, "policy_version": result.policy_version,
            "teacher_spend": {k: v.model_dump() for k, v in batch.teacher.items()},
            "success": sum(batch.correct) / len(batch.correct), "scored_tokens": batch.scored_tokens,
            "budget": budget, "spent": spent_now,
            "sampled_ahead": batch.ahead, "staleness": result.metrics.get("staleness/mean", 0.0),
            # Where a step's time goes, for bench/opd_run.py: the student sampling and the teacher scoring of this
            # step's batch (during the previous step's update when it was sampled ahead), the update with its
            # publication and the student's weight load, and `wall`, the step's own time on the clock (without the
            # measurements). `waited`: the update was done and the next batch was not.
            "seconds": {**batch.seconds, "update": time.perf_counter() - updating - waited,
                        "waited": waited, "wall": time.perf_counter() - started},
        }
        if params.eval_every and ((step + 1) % params.eval_every == 0 or last):
            curve["after"] = await self.measure(ctx)
        summary["eval"] = curve
        await ctx.store.add(ctx.run_id, opd_steps=1, opd_samples=sum(len(g.samples) for g in batch.groups))
        await ctx.store.event(ctx.run_id, "opd_step", f"OPD step {step + 1}/{params.steps}: teacher KL "
                              f"{result.metrics.get('teacher_kl', 0.0):.3f}, success {summary['success']:.2f}",
                              stage=self.name, data=summary)
        return summary

    async def sampled_and_scored(self, ctx: RunContext, step: int, *, ahead: bool = False) -> ScoredBatch:
        """Step `step`'s batch: `group_size` episodes on each of its `prompts_per_step` tasks from the policy the
        student serves now, rewarded on the final answer, with the teacher's log-probabilities of their tokens."""
        params, pool = ctx.config.opd, self.tasks(ctx)
        started = time.perf_counter()
        tasks = [pool[(step * params.prompts_per_step + j) % len(pool)] for j in range(params.prompts_per_step)]
        sampling = SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens, seed=1000 * step + 11)
        rollouts = await ctx.services.student.rollouts([RolloutItem(task=t) for t in tasks], n=params.group_size,
                                                       max_turns=params.max_turns, sampling=sampling)
        episodes = rollouts.episodes
        correct = [(await score_answer_async(e.final_answer, tasks[i // params.group_size].true_answer)).correct
                   for i, e in enumerate(episodes)]
        groups = [RolloutGroup(prompt_id=task.id, samples=[
            RLSample.from_episode(episodes[i], float(correct[i]) if params.task_reward else 0.0)
            for i in range(j * params.group_size, (j + 1) * params.group_size)]) for j, task in enumerate(tasks)]
        sampled = time.perf_counter()
        groups, teacher = await teacher_scored(ctx, groups, PURPOSE)
        return ScoredBatch(step=step, groups=groups, correct=correct, teacher=teacher,
                           scored_tokens=sum(sum(e.loss_mask) for e in episodes), ahead=ahead,
                           seconds={"sampling": sampled - started, "scoring": time.perf_counter() - sampled})

    async def measure(self, ctx: RunContext) -> dict:
        """The served student on the first `opd.eval_tasks` evaluation tasks: greedy success, and the reverse KL to
        the teacher per generated token on episodes sampled at temperature 1 (behaviour minus teacher log-probability
        of each sampled token, averaged over tokens: a sampled estimate of KL(student || teacher))."""
        params, tasks = ctx.config.eval, ctx.pools.eval[: ctx.config.opd.eval_tasks]
        items = [RolloutItem(task=t) for t in tasks]
        greedy = await ctx.services.student.rollouts(items, n=1, max_turns=params.max_turns, sampling=SamplingParams(
            temperature=0.0, max_tokens=params.max_tokens, seed=0))
        solved = [(await score_answer_async(e.final_answer, t.true_answer)).correct
                  for t, e in zip(tasks, greedy.episodes)]
        sampled = await ctx.services.student.rollouts(items, n=1, max_turns=params.max_turns, sampling=SamplingParams(
            temperature=1.0, max_tokens=params.max_tokens, seed=17))
        groups = [RolloutGroup(samples=[RLSample.from_episode(e, 0.0)]) for e in sampled.episodes]
        groups, cost = await teacher_scored(ctx, groups, "eval_scoring")
        gaps = [b - t for g in groups for s in g.samples
                for b, t, m in zip(s.logprobs, s.teacher_logprobs, s.loss_mask) if m]
        return {"n": len(tasks), "solved": sum(solved), "success": sum(solved) / len(tasks) if tasks else 0.0,
                "reverse_kl": sum(gaps) / len(gaps) if gaps else 0.0, "tokens": len(gaps),
                "policy_version": greedy.policy_version, "scored_prompt_tokens": spend_tokens(cost)}

    def follow_ups(self, ctx: RunContext, item: WorkItem, result: dict) -> list[WorkItem]:
        step = int(item.payload["step"])
        if step + 1 < ctx.config.opd.steps:
            return [self.item(ctx, f"step-{step + 1:05d}", step=step + 1)]
        return []

    async def finish(self, ctx: RunContext) -> None:
        await self._ahead.drop(ctx)
        results = [r for r in (await ctx.store.results(ctx.run_id, self.name)).values() if "metrics" in r]
        samples = sum(int(r["metrics"].get("num_samples", 0)) for r in results)
        # What eval_opd and the arm's costs read: the steps taken and the episodes trained on.
        await ctx.store.set_counters(ctx.run_id, opd_optimizer_steps=len(results), opd_train_rows=samples)
