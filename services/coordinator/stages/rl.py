"""SCoRe-RL: short-horizon GRPO from verified prefixes, rewarded on the key step.

Each GRPO step is one work item; the next is enqueued once its result is recorded, so steps run in order and
a crash resumes at the step that did not finish. Every step: the student samples a group from each prefix,
rewards are computed (final answer, else the key-step term through the teacher's step judgements), the
trainer applies the update and publishes a version, the student loads it.
"""

from __future__ import annotations

from services.coordinator.context import RunContext
from services.coordinator.queue import WorkItem
from services.coordinator.records import records_of
from services.coordinator.stages.base import Stage
from services.coordinator.stages.training import with_run_trackers
from shared.schemas.agent import Episode
from shared.schemas.rl import RLSample, RLSessionCreate, RLStepRequest, RolloutGroup
from shared.schemas.rollout import RolloutItem
from shared.schemas.runs import KeyStepRewards, TrajectoryRecord
from shared.schemas.sampling import SamplingParams
from shared.schemas.teacher import JudgementRequest, StepJudgementItem
from shared.scoring import score_answer_async

REWARD_KINDS = ("correct", "equivalent", "repeat", "other", "no_answer")


def rl_prefixes(records: list[TrajectoryRecord]) -> list[TrajectoryRecord]:
    """RL-pool trajectories the teacher corrected: each gives (prefix, chosen step, rejected step)."""
    return sorted((r for r in records if r.pool == "rl" and r.chosen_step is not None and r.first_error_step is not None),
                  key=lambda r: r.task.id)


def session_id(ctx: RunContext) -> str:
    return f"{ctx.run_id}-rl"


async def key_step_kinds(ctx: RunContext, prefix_record: TrajectoryRecord, episodes: list[Episode]) -> list[str]:
    """The reward kind of each episode: final answer first, then the first new step against chosen/rejected."""
    k = prefix_record.first_error_step
    prefix = prefix_record.steps[:k]
    kinds: list[str | None] = []
    judged: list[tuple[int, StepJudgementItem, StepJudgementItem]] = []
    for i, episode in enumerate(episodes):
        if episode.final_answer is None:
            kinds.append("no_answer")
        elif (await score_answer_async(episode.final_answer, prefix_record.task.true_answer)).correct:
            kinds.append("correct")
        elif len(episode.steps) <= k:
            kinds.append("other")
        else:
            kinds.append(None)
            candidate = episode.steps[k]
            judged.append((i,
                           StepJudgementItem(kind="step", task=prefix_record.task, steps=[*prefix, prefix_record.chosen_step],
                                             index=k, candidate=candidate),
                           StepJudgementItem(kind="step", task=prefix_record.task,
                                             steps=[*prefix, prefix_record.rejected_step], index=k, candidate=candidate)))
    if judged:
        request = JudgementRequest(items=[item for _, chosen, rejected in judged for item in (chosen, rejected)])
        verdicts = (await ctx.services.teacher.judgements(request)).judgements
        for n, (i, _, _) in enumerate(judged):
            same_as_chosen, same_as_rejected = verdicts[2 * n].equivalent, verdicts[2 * n + 1].equivalent
            kinds[i] = "equivalent" if same_as_chosen else "repeat" if same_as_rejected else "other"
    return kinds  # type: ignore[return-value]


def reward_of(kind: str, rewards: KeyStepRewards) -> float:
    return float(getattr(rewards, kind))


class RLStage(Stage):
    name, queue = "rl", "rl"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.rl.steps > 0

    async def prefixes(self, ctx: RunContext) -> list[TrajectoryRecord]:
        return rl_prefixes(records_of(await ctx.store.results(ctx.run_id, "mps")))

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        prefixes = await self.prefixes(ctx)
        await ctx.store.set_counters(ctx.run_id, rl_prefixes=len(prefixes))
        if not prefixes:
            await ctx.store.event(ctx.run_id, "log", "SCoRe-RL skipped: no corrected prefixes in the RL pool",
                                  stage=self.name)
            return []
        checkpoint = await ctx.student_checkpoint()
        version = await ctx.ensure_student()
        await ctx.services.trainer.create_session(RLSessionCreate(
            session_id=session_id(ctx), base=checkpoint["path"] if checkpoint else None,
            output_name=session_id(ctx), initial_policy_version=version or 0,
            hyperparameters=with_run_trackers(ctx, ctx.config.rl.hyperparameters),
        ))
        # Only the first step is enqueued; each step enqueues the next (see after_record).
        return [self.item(ctx, "step-00000", step=0)]

    def total(self, ctx: RunContext, items: list[WorkItem]) -> int:
        return ctx.config.rl.steps if items else 0

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        step = int(item.payload["step"])
        params = ctx.config.rl
        sid = session_id(ctx)
        session = await ctx.services.trainer.session(sid)
        if session.steps > step:
            # The trainer applied this step before a crash lost its result: adopt what it published.
            await ctx.use_student(path=session.checkpoint.path, version=session.policy_version, label=f"rl step {step + 1}")
            return {"step": step, "metrics": session.last_metrics, "policy_version": session.policy_version,
                    "rewards": {}, "recovered": True}
        await ctx.ensure_student()  # the previous step loaded its checkpoint; a restarted student gets it back

        prefixes = await self.prefixes(ctx)
        start = step * params.prompts_per_step
        chosen = [prefixes[(start + j) % len(prefixes)] for j in range(min(params.prompts_per_step, len(prefixes)))]
        items = [RolloutItem(task=r.task, prefix_steps=r.steps[:r.first_error_step]) for r in chosen]
        sampling = SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens, seed=1000 * step + 7)
        response = await ctx.services.student.rollouts(items, n=params.group_size, max_turns=params.max_turns,
                                                       sampling=sampling)
        groups, counts = [], dict.fromkeys(REWARD_KINDS, 0)
        for j, record in enumerate(chosen):
            episodes = response.episodes[j * params.group_size:(j + 1) * params.group_size]
            kinds = await key_step_kinds(ctx, record, episodes)
            for kind in kinds:
                counts[kind] += 1
            groups.append(RolloutGroup(prompt_id=record.task.id, samples=[
                RLSample.from_episode(e, reward_of(kind, params.rewards)) for e, kind in zip(episodes, kinds)]))
        result = await ctx.services.trainer.step(sid, RLStepRequest(groups=groups, step_id=f"{sid}-{step}"))
        await ctx.use_student(path=result.checkpoint.path, version=result.policy_version, label=f"rl step {step + 1}")
        n = sum(counts.values())
        summary = {"step": step, "metrics": result.metrics, "policy_version": result.policy_version,
                   "rewards": counts, "reward_mean": sum(reward_of(k, params.rewards) * c for k, c in counts.items()) / n}
        await ctx.store.add(ctx.run_id, rl_steps=1, rl_samples=n)
        await ctx.store.event(ctx.run_id, "rl_step",
                              f"RL step {step + 1}/{params.steps}: reward {summary['reward_mean']:.3f}",
                              stage=self.name, data=summary)
        return summary

    async def after_record(self, ctx: RunContext, item: WorkItem, result: dict) -> None:
        step = int(item.payload["step"])
        if step + 1 < ctx.config.rl.steps:
            following = self.item(ctx, f"step-{step + 1:05d}", step=step + 1)
            await ctx.store.plan(ctx.run_id, self.name, [following.key])
            await ctx.queue.put(self.queue, [following])
