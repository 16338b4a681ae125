"""SCoRe-RL: short-horizon GRPO from verified prefixes, rewarded on the key step.

Each GRPO step is one work item; the next is enqueued once its result is recorded, so steps run in order and
a crash resumes at the step that did not finish. Every step: the student samples a group from each prefix,
rewards are computed (final answer, else the key-step term through the teacher's step judgements), the
trainer applies the update and publishes a version, the student loads it. With the hyperparameters'
`max_staleness` >= 1 the next step's groups are sampled and rewarded during this one's update (`stages/ahead.py`).

The same stage, named `score_opd`, is the SCoRe+OPD arm: from the SCoRe-SFT checkpoint, with the teacher model's
log-probabilities of the student's tokens (`POST /v1/logprobs`) sent along, so each step's advantages gain the
reverse-KL term (the trainer's `teacher_kl_coef`). `rl` does the same whenever its own hyperparameters set one.
"""

from __future__ import annotations

from services.coordinator.clients import ServiceError
from services.coordinator.context import RunContext
from services.coordinator.datasets import rl_dataset
from services.coordinator.queue import WorkItem
from services.coordinator.records import add_spend, correction_spend, spend
from services.coordinator.stages.ahead import BatchesAhead, StepBatch
from services.coordinator.stages.base import Stage
from services.coordinator.stages.training import with_run_trackers
from shared.schemas.agent import Episode
from shared.schemas.logprobs import LogprobRequest, LogprobSequence
from shared.schemas.rl import GRPOHyperparameters, RLSample, RLSessionCreate, RLStepRequest, RolloutGroup
from shared.schemas.rollout import RolloutItem
from shared.schemas.run_config import KeyStepRewards, RLParams
from shared.schemas.sampling import SamplingParams
from shared.schemas.teacher import JudgementRequest, StepJudgementItem
from shared.schemas.trajectories import TeacherSpend, TrajectoryRecord
from shared.scoring import score_answer_async
from shared.tasks.expert import remaining_gold_turns

REWARD_KINDS = ("correct", "wrong_final", "equivalent", "repeat", "other", "no_answer")


def session_id(ctx: RunContext, stage: str = "rl") -> str:
    return f"{ctx.run_id}-{stage}"


def episode_turns(params: RLParams, records: list[TrajectoryRecord]) -> int:
    """Turns an RL episode may take after its prefix: the configured horizon (8 in the paper), never fewer than
    the longest remaining gold horizon among the prefixes, so every task can still be finished."""
    needed = [remaining_gold_turns(r.task, r.steps[:r.first_error_step]) for r in records]
    return max([params.max_turns, *(n for n in needed if n is not None)])


def answer_kind(prefix_record: TrajectoryRecord, episode: Episode, correct: bool) -> str | None:
    """The reward kind decided without a judge, or None when the first new step must be judged. `correct`: the
    episode's final answer scored against the gold answer.

    Official reward: a correct final answer is 1; no final answer is 0; a wrong final answer given by the first
    new step itself is 0 (the key step ended the episode wrongly); otherwise the key step is judged.
    """
    k = prefix_record.first_error_step
    if episode.final_answer is None:
        return "no_answer"
    if correct:
        return "correct"
    if len(episode.steps) <= k:
        return "other"
    if len(episode.steps) == k + 1:
        return "wrong_final"
    return None


async def key_step_kinds(ctx: RunContext, prefix_record: TrajectoryRecord, episodes: list[Episode],
                         spent: list | None = None) -> list[str]:
    """The reward kind of each episode: final answer first, then the first new step against chosen/rejected.
    The teacher's judgement costs are appended to `spent`."""
    k = prefix_record.first_error_step
    prefix = prefix_record.steps[:k]
    truth = prefix_record.task.true_answer
    kinds = [answer_kind(prefix_record, episode, (await score_answer_async(episode.final_answer, truth)).correct)
             for episode in episodes]
    judged: list[tuple[int, StepJudgementItem, StepJudgementItem]] = []
    for i, episode in enumerate(episodes):
        if kinds[i] is None:
            candidate = episode.steps[k]
            judged.append((i,
                           StepJudgementItem(kind="step", task=prefix_record.task, steps=[*prefix, prefix_record.chosen_step],
                                             index=k, candidate=candidate),
                           StepJudgementItem(kind="step", task=prefix_record.task,
                                             steps=[*prefix, prefix_record.rejected_step], index=k, candidate=candidate)))
    if judged:
        request = JudgementRequest(items=[item for _, chosen, rejected in judged for item in (chosen, rejected)])
        response = await ctx.services.teacher.judgements(request)
        if spent is not None:
            spent.append(response.cost)
        verdicts = response.judgements
        for n, (i, _, _) in enumerate(judged):
            kinds[i] = judged_kind(verdicts[2 * n].equivalent, verdicts[2 * n + 1].equivalent)
    return kinds  # type: ignore[return-value]


def judged_kind(same_as_chosen: bool, same_as_rejected: bool) -> str:
    """A judged key step: equivalent to the teacher's corrected step, a repeat of the student's mistake, or other."""
    return "equivalent" if same_as_chosen else "repeat" if same_as_rejected else "other"


def reward_of(kind: str, rewards: KeyStepRewards) -> float:
    return float(getattr(rewards, kind))


class RewardedBatch(StepBatch):
    """One step's groups with their rewards: what the trainer steps on."""

    groups: list[RolloutGroup]
    counts: dict[str, int]  # episodes by reward kind
    teacher: dict[str, TeacherSpend]  # purpose -> spend of the judgements and scoring


class RLStage(Stage):
    queue = "rl"

    def __init__(self, name: str = "rl") -> None:
        self.name = name  # "rl", or "score_opd": the SCoRe+OPD arm
        self._ahead = BatchesAhead(name, RewardedBatch)

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.rl.steps > 0 and (self.name == "rl" or ctx.config.score_opd.enabled)

    def hyperparameters(self, ctx: RunContext) -> GRPOHyperparameters:
        hp = ctx.config.rl.hyperparameters
        if self.name == "score_opd":
            hp = hp.model_copy(update={"teacher_kl_coef": ctx.config.score_opd.teacher_kl_coef})
        return hp

    def purposes(self) -> tuple[str, str]:
        """The teacher purposes of this stage's judgements and scoring (an arm's spend stays its own)."""
        return ("rl_judgements", "rl_scoring") if self.name == "rl" else ("score_opd_judgements", "score_opd_scoring")

    async def prefixes(self, ctx: RunContext) -> list[TrajectoryRecord]:
        return await rl_dataset(ctx.store, ctx.run_id, ctx.config)

    async def skip_reason(self, ctx: RunContext) -> str | None:
        if self.name == "score_opd" and (reason := await without_log_probabilities(ctx)):
            return reason
        prefixes = await self.prefixes(ctx)
        await ctx.store.set_counters(ctx.run_id, rl_prefixes=len(prefixes))
        return None if prefixes else "no corrected prefixes in the RL pool"

    async def plan(self, ctx: RunContext) -> list[WorkItem]:
        pointers = await ctx.store.pointers(ctx.run_id)
        if self.name == "rl":
            base = pointers.student_checkpoint.checkpoint if pointers.student_checkpoint else None
            version = await ctx.ensure_student()
        else:  # SCoRe+OPD starts where SCoRe-RL started: the SCoRe-SFT policy (the cold start when SFT trained nothing)
            base = pointers.sft_checkpoint or pointers.bc_init_checkpoint
            version = await ctx.use_student(base, label=self.name)
        sid = session_id(ctx, self.name)
        await ctx.services.trainer.create_session(RLSessionCreate(
            session_id=sid, base=base.path if base else None, output_name=sid, initial_policy_version=version or 0,
            hyperparameters=with_run_trackers(ctx, self.hyperparameters(ctx)),
        ))
        # Only the first step is enqueued; each step enqueues the next (see follow_ups).
        return [self.item(ctx, "step-00000", step=0)]

    def total(self, ctx: RunContext, items: list[WorkItem]) -> int:
        return ctx.config.rl.steps if items else 0

    async def handle(self, ctx: RunContext, item: WorkItem) -> dict:
        step = int(item.payload["step"])
        params = ctx.config.rl
        sid = session_id(ctx, self.name)
        label = f"{self.name} step {step + 1}"
        session = await ctx.services.trainer.session(sid)
        if session.steps > step:
            # The trainer applied this step before a crash lost its result: adopt what it published.
            await self._ahead.drop(ctx)
            await ctx.use_student(session.checkpoint, version=session.policy_version, label=label)
            return {"step": step, "metrics": session.last_metrics, "policy_version": session.policy_version,
                    "rewards": {}, "recovered": True}
        await ctx.ensure_student()  # the previous step loaded its checkpoint; a restarted student gets it back

        batch = await self._ahead.take(ctx, step) or await self.rewarded(ctx, step)
        # Streaming (max_staleness >= 1): the next step's groups are sampled and rewarded during this update.
        ahead = self.hyperparameters(ctx).max_staleness >= 1 and step + 1 < params.steps
        result, _ = await self._ahead.update_while_preparing(
            ctx, ctx.services.trainer.step(sid, RLStepRequest(groups=batch.groups, step_id=f"{sid}-{step}")),
            (lambda: self.rewarded(ctx, step + 1, ahead=True)) if ahead else None)
        await ctx.use_student(result.checkpoint, version=result.policy_version, label=label)
        counts = batch.counts
        n = sum(counts.values())
        summary = {"step": step, "metrics": result.metrics, "policy_version": result.policy_version,
                   "teacher_spend": {k: v.model_dump() for k, v in batch.teacher.items()}, "rewards": counts,
                   "reward_mean": sum(reward_of(k, params.rewards) * c for k, c in counts.items()) / n,
                   "sampled_ahead": batch.ahead, "staleness": result.metrics.get("staleness/mean", 0.0)}
        await ctx.store.add(ctx.run_id, **{f"{self.name}_steps": 1, f"{self.name}_samples": n})
        kl = f", teacher KL {result.metrics['teacher_kl']:.3f}" if "teacher_kl" in result.metrics else ""
        await ctx.store.event(ctx.run_id, "rl_step",
                              f"{self.name} step {step + 1}/{params.steps}: reward {summary['reward_mean']:.3f}{kl}",
                              stage=self.name, data=summary)
        return summary

    async def rewarded(self, ctx: RunContext, step: int, *, ahead: bool = False) -> RewardedBatch:
        """Step `step`'s groups: `group_size` episodes from each of its prefixes, sampled by the policy the student
        serves now, with their key-step rewards (and the teacher's scores of their tokens with a KL term)."""
        params = ctx.config.rl
        prefixes = await self.prefixes(ctx)
        start = step * params.prompts_per_step
        chosen = [prefixes[(start + j) % len(prefixes)] for j in range(min(params.prompts_per_step, len(prefixes)))]
        items = [RolloutItem(task=r.task, prefix_steps=r.steps[:r.first_error_step]) for r in chosen]
        sampling = SamplingParams(temperature=params.temperature, max_tokens=params.max_tokens, seed=1000 * step + 7)
        response = await ctx.services.student.rollouts(items, n=params.group_size,
                                                       max_turns=episode_turns(params, chosen), sampling=sampling)
        groups, counts, spent = [], dict.fromkeys(REWARD_KINDS, 0), []
        for j, record in enumerate(chosen):
            episodes = response.episodes[j * params.group_size:(j + 1) * params.group_size]
            kinds = await key_step_kinds(ctx, record, episodes, spent)
            for kind in kinds:
                counts[kind] += 1
            groups.append(RolloutGroup(prompt_id=record.task.id, samples=[
                RLSample.from_episode(e, reward_of(kind, params.rewards)) for e, kind in zip(episodes, kinds)]))
        judged_as, scored_as = self.purposes()
        scoring = None
        if self.hyperparameters(ctx).teacher_kl_coef > 0:
            groups, scoring = await teacher_scored(ctx, groups, scored_as)
        teacher = add_spend(*(correction_spend(c, purpose_of_judgements=judged_as) for c in spent), scoring or {})
        return RewardedBatch(step=step, groups=groups, counts=counts, teacher=teacher, ahead=ahead)

    def follow_ups(self, ctx: RunContext, item: WorkItem, result: dict) -> list[WorkItem]:
        # After a dead-lettered step too: the next one samples from the policy as it is (its prompts do not depend
        # on the failed step), so one poisoned step costs that step, not the rest of the stage.
        step = int(item.payload["step"])
        if step + 1 < ctx.config.rl.steps:
            return [self.item(ctx, f"step-{step + 1:05d}", step=step + 1)]
        return []


async def without_log_probabilities(ctx: RunContext) -> str | None:
    """Why the teacher cannot score the student's tokens, or None: the scripted expert has no model, and a teacher
    with another tokenizer refuses them (its 422 message names both tokenizers). Checked with one two-token call."""
    if await ctx.services.teacher.engine() == "expert":
        return "the teacher is the scripted expert: no model, so no log-probabilities to distil (run a model teacher)"
    tokenizer = (await ctx.services.student.weights()).tokenizer
    try:
        await ctx.services.teacher.logprobs(LogprobRequest(tokenizer=tokenizer, sequences=[
            LogprobSequence(token_ids=[0, 0], score_mask=[0, 1])]))
    except ServiceError as exc:
        if exc.status == 422:
            return f"the teacher cannot score the student's tokens: {exc}"
        raise
    return None


async def teacher_scored(ctx: RunContext, groups: list[RolloutGroup], purpose: str) -> tuple[list[RolloutGroup], dict]:
    """The groups with the teacher model's log-probabilities of every token the student wrote, and what the scoring
    cost under `purpose`. The student's tokenizer goes along, so a teacher with another vocabulary refuses (422)."""
    samples = [sample for group in groups for sample in group.samples]
    tokenizer = (await ctx.services.student.weights()).tokenizer
    scored = await ctx.services.teacher.logprobs(LogprobRequest(tokenizer=tokenizer, sequences=[
        LogprobSequence(token_ids=s.token_ids, score_mask=s.loss_mask) for s in samples]))
    scores = iter(scored.sequences)
    groups = [group.model_copy(update={"samples": [
        s.model_copy(update={"teacher_logprobs": next(scores).logprobs}) for s in group.samples]}) for group in groups]
    return groups, {purpose: spend(scored.cost.teacher_calls, scored.cost.teacher_prompt_tokens, 0)}
