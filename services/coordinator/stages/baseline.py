"""Plain trajectory distillation, the reference SCoRe is compared with: `baseline` at equal tasks (the teacher
solves the tasks SCoRe used) and `baseline_tokens` at equal teacher tokens (reserve tasks until SCoRe's spend)."""

from __future__ import annotations

import math

from services.coordinator.context import RunContext
from services.coordinator.datasets import baseline_dataset, replayed, selection_salt
from services.coordinator.records import add_spend, records_of, rows_for_sft
from services.coordinator.stages.base import chunks
from services.coordinator.stages.teacher_solve import CHUNK, TeacherSolveStage
from services.coordinator.stages.training import fine_tune


class BaselineStage(TeacherSolveStage):
    """Plain trajectory distillation at equal tasks: the teacher solves the tasks SCoRe used."""

    name, queue, pool = "baseline", "baseline", "train"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.baseline.enabled

    def tasks(self, ctx: RunContext):
        if ctx.config.baseline.start == "cold_start":
            return ctx.pools.train + ctx.pools.rl  # SCoRe used both: SFT data and RL prefixes
        return ctx.pools.train

    async def finish(self, ctx: RunContext) -> None:
        rows = rows_for_sft(await baseline_dataset(ctx.store, ctx.run_id, ctx.config))
        if ctx.config.baseline.start == "cold_start":
            base = (await ctx.store.pointers(ctx.run_id)).bc_init_checkpoint
        else:
            base = ctx.config.bc_init.base
        if not rows:
            raise RuntimeError("baseline: the teacher solved none of the training tasks; nothing to train on")
        checkpoint = await fine_tune(ctx, stage=self.name, base=base, rows=rows,
                                     hyperparameters=ctx.config.baseline.hyperparameters)
        await ctx.use_student(checkpoint, label=self.name)


RESERVE_MARGIN = 1.25  # reserve trajectories solved up front, over what the budget buys at the mean cost


def score_teacher_spend(mps_records, rl_results: dict) -> int:
    """SCoRe's teacher spend after cold start, prompt plus written tokens: corrections, rollouts, judgements."""
    return spend_tokens(add_spend(*(r.teacher_spend for r in mps_records),
                                  *((s.get("teacher_spend") or {}) for s in rl_results.values())))


def spend_tokens(spend: dict) -> int:
    """Teacher tokens of a spend by purpose: prompt plus written, every purpose."""
    return sum(part.prompt_tokens + part.written_tokens for part in spend.values())


def record_spend(record) -> int:
    return spend_tokens(record.teacher_spend)


def reserve_estimate(budget: int, cold_start_records, reserve: int) -> int:
    """Reserve tasks to solve up front: what the budget buys at the cold start's mean cost per trajectory (the
    same kind of task, solved the same way), with a margin; every reserve task when there is no such mean."""
    costs = [record_spend(r) for r in cold_start_records]
    mean = sum(costs) / len(costs) if costs else 0
    if mean <= 0:
        return reserve
    return min(reserve, math.ceil(budget / mean * RESERVE_MARGIN) + CHUNK)


def within_budget(records, budget: int) -> tuple[list, int]:
    """Records in order until their teacher tokens (prompt + written) reach `budget`; the one that crosses it is
    the last taken. (records, tokens used)."""
    used, chosen = 0, []
    for record in records:
        if used >= budget:
            break
        chosen.append(record)
        used += record_spend(record)
    return chosen, used


class BaselineTokensStage(TeacherSolveStage):
    """Plain trajectory distillation at equal teacher tokens: reserve tasks' teacher trajectories, in order, until
    SCoRe's teacher spend after cold start is used up (the trajectory that crosses the budget is the last one).

    The teacher solves only the reserve tasks the budget needs: as many as the cold start's mean cost says up
    front, in parallel items, then one chunk at a time in order until the budget is spent. Solving the whole
    reserve would spend several times the budget on trajectories the arm never uses (with a model teacher, real
    tokens), and count them in the run's teacher tokens."""

    name, queue, pool = "baseline_tokens", "baseline", "reserve"

    def enabled(self, ctx: RunContext) -> bool:
        return ctx.config.baseline.equal_tokens

    async def skip_reason(self, ctx: RunContext) -> str | None:
        return None if ctx.pools.reserve else "no reserve tasks (tasks.n_reserve is 0)"

    async def budget(self, ctx: RunContext) -> int:
        return score_teacher_spend(records_of(await ctx.store.results(ctx.run_id, "mps")),
                                   await ctx.store.results(ctx.run_id, "rl"))

    async def plan(self, ctx: RunContext):
        cold = records_of(await ctx.store.results(ctx.run_id, "bc_init"))
        wanted = reserve_estimate(await self.budget(ctx), cold, len(ctx.pools.reserve))
        return (await super().plan(ctx))[: math.ceil(wanted / CHUNK)]

    async def solved_until_spent(self, ctx: RunContext, budget: int) -> list:
        """The reserve's records in order, after solving further chunks (durably, one at a time) while the
        records so far fall short of the budget and reserve tasks remain."""
        results = await ctx.store.results(ctx.run_id, self.name)
        for index, chunk in enumerate(chunks(self.tasks(ctx), CHUNK)):
            if within_budget(records_of(results), budget)[1] >= budget:
                break
            item = self.chunk_item(ctx, index, chunk)
            if item.key in results:
                continue
            await ctx.store.plan(ctx.run_id, self.name, [item.key])
            results[item.key] = await self.handle(ctx, item)
            await ctx.store.record(ctx.run_id, self.name, item.key, results[item.key])
        return records_of(results)

    async def finish(self, ctx: RunContext) -> None:
        budget = await self.budget(ctx)
        chosen, used = within_budget(await self.solved_until_spent(ctx, budget), budget)
        spend = add_spend(*(r.teacher_spend for r in chosen))
        part = spend.get("reserve_trajectories")
        await ctx.store.set_counters(ctx.run_id, baseline_tokens_budget=budget, baseline_tokens_used=used,
                                     baseline_tokens_tasks=len(chosen),
                                     baseline_tokens_prompt_tokens=part.prompt_tokens if part else 0,
                                     baseline_tokens_written_tokens=part.written_tokens if part else 0)
        if used < budget:
            await ctx.store.event(ctx.run_id, "log", f"baseline_tokens: reserve exhausted at {used} of {budget} "
                                  "teacher tokens (raise tasks.n_reserve)", stage=self.name)
        cold = records_of(await ctx.store.results(ctx.run_id, "bc_init"))
        rows = rows_for_sft(chosen + replayed(cold, ctx.config.sft.replay_bc_init, selection_salt(ctx.config)))
        if not rows:
            raise RuntimeError("baseline_tokens: no teacher trajectory fits the budget; nothing to train on")
        base = (await ctx.store.pointers(ctx.run_id)).bc_init_checkpoint
        checkpoint = await fine_tune(ctx, stage=self.name, base=base, rows=rows,
                                     hyperparameters=ctx.config.baseline.hyperparameters)
        await ctx.use_student(checkpoint, label=self.name)
