"""The method's own logic, one piece at a time: the MPS repair loop, SFT row selection and weights, the RL
horizon and the key-step reward classes, and the statistics the reports use."""

from __future__ import annotations

import asyncio

import pytest

from services.coordinator.records import plan_corrected, rows_for_sft, trained_on
from services.coordinator.stages.mps import mentor
from services.coordinator.stages.rl import answer_kind, episode_turns, judged_kind, reward_of
from services.coordinator.datasets import rl_prefixes, sft_dataset, sft_records
from shared.agent.format import parse_act
from shared.schemas.agent import Episode, Step, Task
from shared.schemas.run_config import KeyStepRewards, MPSParams, RLParams, RunConfig
from shared.schemas.teacher import Correction, Cost
from shared.schemas.trajectories import Repair, TrajectoryRecord
from shared.scoring import score_answer
from shared.stats import discordant, mcnemar_exact, paired_bootstrap, wilson
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps, remaining_gold_turns

TASK = Task(id="t1", question="Start with 2. Add 3. What is the result?", true_answer=5)
PLAN = Step(kind="plan", thought="add them")


def act(code: str, observation: str = "") -> Step:
    return Step(kind="act", thought="step", code=code, observation=observation)


def episode(steps: list[Step], answer: str | None, tokens: int = 3) -> Episode:
    return Episode(task_id=TASK.id, steps=steps, final_answer=answer, finished=answer is not None,
                   loss_mask=[1] * tokens)


def record(steps, *, stage="mps", pool="train", outcome="repaired", correct=True, k=None, chosen=None,
           rejected=None, task=TASK) -> TrajectoryRecord:
    return TrajectoryRecord(run_id="r", stage=stage, pool=pool, task=task, outcome=outcome, steps=steps,
                            final_answer="5" if correct else "4", correct=correct, first_error_step=k,
                            chosen_step=chosen, rejected_step=rejected)


# --- SFT rows ----------------------------------------------------------------------------------------------


def weights(row) -> list[int]:
    return [m["weight"] for m in row["messages"] if m["role"] == "assistant"]


def test_malformed_turn_is_context_not_target():
    malformed = parse_act("<thought>oops</thought><code></code>")
    assert malformed.parse_error is not None
    steps = [PLAN, malformed, act("print(2 + 3)", "5"), act("final_answer_print(5)", "5")]
    [row] = rows_for_sft([record(steps)])
    # Plan (student's, unchecked) and malformed turn carry no loss; the good act steps do.
    assert weights(row) == [0, 0, 1, 1]


def test_teacher_plan_is_a_target_student_plan_is_not():
    steps = [PLAN, act("final_answer_print(5)", "5")]
    [teacher_row] = rows_for_sft([record(steps, stage="bc_init", pool="bc_init", outcome="teacher_solved")])
    [student_row] = rows_for_sft([record(steps)])
    assert weights(teacher_row) == [1, 1]
    assert weights(student_row) == [0, 1]
    assert trained_on(record(steps), PLAN) is False


def test_rows_drop_wrong_and_untrainable_trajectories():
    malformed = parse_act("no tags at all")
    wrong = record([PLAN, act("final_answer_print(4)", "4")], correct=False, outcome="unsolved")
    nothing_to_learn = record([PLAN, malformed])
    assert rows_for_sft([wrong, nothing_to_learn]) == []


def test_sft_selection_keeps_repaired_share_of_self_solved_and_replay():
    steps = [PLAN, act("final_answer_print(5)", "5")]
    tasks = [Task(id=f"t{i}", question=f"q{i}", true_answer=5) for i in range(40)]
    repaired = [record(steps, task=t) for t in tasks[:10]]
    solved = [record(steps, task=t, outcome="self_solved") for t in tasks[10:40]]
    rl_pool = [record(steps, task=tasks[0], pool="rl", outcome="repaired")]
    cold = [record(steps, task=t, stage="bc_init", pool="bc_init", outcome="teacher_solved") for t in tasks[:4]]
    chosen = sft_records(repaired + solved + rl_pool, 0.5, "run", cold_start=cold, replay=1.0)
    assert all(r in chosen for r in repaired) and rl_pool[0] not in chosen
    kept = [r for r in chosen if r.outcome == "self_solved"]
    assert 5 <= len(kept) <= 25  # a hashed half of 30
    assert chosen == sft_records(repaired + solved + rl_pool, 0.5, "run", cold_start=cold, replay=1.0)
    assert sum(r.stage == "bc_init" for r in chosen) == 4
    assert not sft_records(solved, 0.0, "run")


def test_two_runs_of_one_config_train_on_the_same_sft_rows_and_another_seed_on_others():
    # The hashed share of self-solved tasks is keyed by the training seed: keyed by the run id it made the SFT rows,
    # their order and so the trained student differ between two runs of the same config.
    steps = [PLAN, act("final_answer_print(5)", "5")]
    solved = [record(steps, task=Task(id=f"t{i}", question=f"q{i}", true_answer=5), outcome="self_solved")
              for i in range(60)]

    class Results:  # what sft_dataset reads from the run store: each stage's results by item key
        async def results(self, run_id, stage):
            return {f"{stage}-{i:03d}": {"record": r.model_dump(mode="json")}
                    for i, r in enumerate(solved if stage == "mps" else [])}

    def chosen(run_id, seed):
        config = RunConfig()
        config.tasks.seed = seed
        return [r.task.id for r in asyncio.run(sft_dataset(Results(), run_id, config))]

    assert chosen("run-a", 0) == chosen("run-b", 0)
    assert chosen("run-a", 0) != chosen("run-a", 1)


# --- the MPS repair loop -------------------------------------------------------------------------------------


class Script:
    """A student that plays scripted episodes and a teacher that plays scripted corrections; calls recorded."""

    def __init__(self, episodes, corrections):
        self.episodes, self.corrections = list(episodes), list(corrections)
        self.rollouts, self.asked = [], []

    async def rollout(self, task, prefix, max_turns):
        self.rollouts.append((list(prefix), max_turns))
        return self.episodes.pop(0)

    async def correct(self, task, steps):
        self.asked.append(list(steps))
        return self.corrections.pop(0)


def correction(k, step, *, hard=False, tokens=10) -> Correction:
    return Correction(task_id=TASK.id, strategy="verify", answer_correct=False, first_error_step=None if hard else k,
                      corrected_step=None if hard else step, hard=hard,
                      cost=Cost(teacher_calls=2, teacher_tokens=tokens, teacher_prompt_tokens=100,
                                rollout_tokens=4, rollout_prompt_tokens=40))


def run(script, pool="train", **params):
    return asyncio.run(mentor(TASK, pool=pool, params=MPSParams(**params), rollout=script.rollout,
                              correct=script.correct))


def test_mentor_self_solved_needs_no_teacher():
    script = Script([episode([PLAN, act("final_answer_print(5)", "5")], "5")], [])
    done = run(script)
    assert done.outcome == "self_solved" and not done.repairs and not script.asked


def test_mentor_repairs_then_the_student_resumes_with_a_full_turn_budget():
    bad = [PLAN, act("a = 2 - 3\nprint(a)", "-1"), act("b = a * 9\nprint(b)", "-9"), act("final_answer_print(b)", "-9")]
    fix = act("a = 2 + 3\nprint(a)", "5")
    resumed = [PLAN, fix, act("final_answer_print(a)", "5")]
    script = Script([episode(bad, "-9", tokens=7), episode(resumed, "5", tokens=2)], [correction(1, fix)])
    done = run(script, max_turns=8)
    assert done.outcome == "repaired" and done.episode.steps == resumed
    assert done.first == (1, bad[1], fix)
    # The student resumes from the verified prefix plus the teacher's step, with the paper's 8 new turns.
    assert script.rollouts == [([], 8), ([PLAN, fix], 8)]
    assert done.student_tokens == 9 and done.repairs[0].teacher_tokens == 10


def test_mentor_gives_up_after_max_repairs_and_on_hard():
    wrong = episode([PLAN, act("final_answer_print(4)", "4")], "4")
    fix = act("final_answer_print(5)", "5")
    script = Script([wrong, wrong, wrong], [correction(1, fix), correction(1, fix)])
    done = run(script, max_repairs=2)
    assert done.outcome == "unsolved" and len(done.repairs) == 2 and len(script.rollouts) == 3
    script = Script([wrong], [correction(1, fix, hard=True)])
    done = run(script)
    assert done.outcome == "hard" and done.first is None and len(script.rollouts) == 1


def test_mentor_rl_pool_keeps_one_correction_without_resuming():
    wrong = episode([PLAN, act("final_answer_print(4)", "4")], "4")
    fix = act("final_answer_print(5)", "5")
    script = Script([wrong], [correction(1, fix)])
    done = run(script, pool="rl")
    assert done.outcome == "unsolved" and done.first == (1, wrong.steps[1], fix) and len(script.rollouts) == 1


def test_mentor_refuses_an_error_step_outside_the_trajectory():
    wrong = episode([PLAN, act("final_answer_print(4)", "4")], "4")
    script = Script([wrong], [correction(5, act("final_answer_print(5)", "5"))])
    assert run(script).outcome == "hard"


# --- SCoRe-RL: horizon and key-step rewards ------------------------------------------------------------------


def test_a_plan_the_teacher_corrected_is_a_target_and_gives_no_rl_prefix():
    wrong = episode([PLAN, act("final_answer_print(4)", "4")], "4")
    plan = Step(kind="plan", thought="add 2 and 3, then answer")
    resumed = [plan, act("print(2 + 3)", "5"), act("final_answer_print(5)", "5")]
    script = Script([wrong, episode(resumed, "5")], [correction(0, plan)])
    done = run(script, max_turns=8)
    # The student resumes from the teacher's plan alone, and its trajectory trains on that plan.
    assert done.outcome == "repaired" and script.rollouts == [([], 8), ([plan], 8)]
    repaired = record(done.episode.steps, k=0, chosen=plan, rejected=PLAN).model_copy(
        update={"repairs": done.repairs})
    assert plan_corrected(repaired) and weights(rows_for_sft([repaired])[0]) == [1, 1, 1]
    # A student plan that only survived an act-step repair stays context.
    act_repaired = record(done.episode.steps).model_copy(update={"repairs": [Repair(first_error_step=1, hard=False)]})
    assert weights(rows_for_sft([act_repaired])[0]) == [0, 1, 1]
    # RL starts from verified prefixes after an act-step correction only.
    rl_plan = record(wrong.steps, pool="rl", outcome="unsolved", correct=False, k=0, chosen=plan, rejected=PLAN)
    rl_act = record(wrong.steps, pool="rl", outcome="unsolved", correct=False, k=1, chosen=resumed[2],
                    rejected=wrong.steps[1])
    assert rl_prefixes([rl_plan, rl_act]) == [rl_act]


def test_rl_horizon_is_the_papers_and_covers_the_remaining_gold_horizon():
    assert RLParams().max_turns == 8
    task = next(t for t in builtin_tasks(family="arith", n=50, seed=0) if len(t.meta["ops"]) == 4)
    gold = expert_steps(task)
    assert remaining_gold_turns(task, [gold[0]]) == 5  # 4 operations and the final answer
    prefix = record([gold[0]], task=task, k=1, chosen=gold[1], rejected=gold[1])
    assert episode_turns(RLParams(max_turns=2), [prefix]) == 5
    assert episode_turns(RLParams(), [prefix]) == 8
    assert remaining_gold_turns(TASK, []) is None
    assert episode_turns(RLParams(max_turns=3), [record([PLAN], k=1, chosen=PLAN, rejected=PLAN)]) == 3


def rl_record():
    return record([PLAN, act("a = 2 - 3\nprint(a)", "-1")], pool="rl", outcome="unsolved", correct=False, k=1,
                  chosen=act("a = 2 + 3\nprint(a)", "5"), rejected=act("a = 2 - 3\nprint(a)", "-1"))


def test_key_step_reward_classes():
    r, rewards = rl_record(), KeyStepRewards()
    prefix = [PLAN]
    right = episode([*prefix, act("final_answer_print(5)", "5")], "5")
    wrong_at_once = episode([*prefix, act("final_answer_print(7)", "7")], "7")
    no_answer = episode([*prefix, act("a = 1\nprint(a)", "1")], None)
    needs_judge = episode([*prefix, act("a = 2 + 3\nprint(a)", "5"), act("final_answer_print(6)", "6")], "6")
    kinds = [answer_kind(r, e, score_answer(e.final_answer, r.task.true_answer).correct)
             for e in (right, wrong_at_once, no_answer, needs_judge)]
    assert kinds == ["correct", "wrong_final", "no_answer", None]
    # The official reward: a wrong final answer from the first new step is 0, not the 0.1 of "other".
    assert [reward_of(k, rewards) for k in kinds[:3]] == [1.0, 0.0, 0.0]
    assert [judged_kind(True, False), judged_kind(False, True), judged_kind(False, False)] == [
        "equivalent", "repeat", "other"]
    assert [reward_of(k, rewards) for k in ("equivalent", "repeat", "other")] == [0.5, 0.0, 0.1]


# --- statistics ------------------------------------------------------------------------------------------


def test_wilson_interval_matches_known_values():
    lo, hi = wilson(7, 64)
    assert (round(lo, 3), round(hi, 3)) == (0.054, 0.209)  # by hand: centre 0.1315, half-width 0.0775
    assert wilson(0, 64)[0] == 0.0 and wilson(64, 64)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_exact_mcnemar_and_paired_bootstrap():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(5, 5) == 1.0
    a = {"x": 1, "y": 1, "z": 0, "w": 0}
    b = {"x": 1, "y": 0, "z": 1, "w": 1}
    assert discordant(a, b) == (1, 2)
    lo, hi = paired_bootstrap([1] * 30 + [0] * 70, samples=500)
    assert 0.2 < lo < 0.3 < hi < 0.4


# --- a skipped RL stage reports nothing under `rl` -----------------------------------------------------------


def test_skipped_rl_is_not_evaluated_under_its_name(redis_url, tmp_path):
    import redis.asyncio as aioredis

    from services.coordinator.context import RunContext
    from services.coordinator.pipeline import BY_NAME, enter
    from services.coordinator.queue import StageQueue
    from services.coordinator.store import RunStore
    from shared.schemas.run_config import RunConfig

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        store = RunStore(client, tmp_path)
        await store.create("norl", RunConfig())
        ctx = RunContext(run_id="norl", config=RunConfig(), store=store, queue=StageQueue(client, "t"),
                         services=None, run_dir=tmp_path)
        # No MPS results: the RL pool has no corrected prefix, so RL and its evaluation are skipped.
        await enter(ctx, BY_NAME["rl"])
        await enter(ctx, BY_NAME["eval_rl"])
        progress = [await store.stage("norl", name) for name in ("rl", "eval_rl")]
        info = await store.info("norl")
        await client.aclose()
        return progress, info

    (rl, eval_rl), info = asyncio.run(scenario())
    assert rl.state == "skipped" and "no corrected prefixes" in rl.detail
    assert eval_rl.state == "skipped" and eval_rl.detail == "rl did not run"
    assert "rl" not in info.eval and info.counters.get("rl_prefixes") == 0


def test_equal_token_baseline_takes_trajectories_until_the_budget_is_spent():
    from services.coordinator.records import teacher_record
    from services.coordinator.stages.baseline import within_budget
    from shared.schemas.teacher import TeacherEpisode

    steps = [PLAN, act("final_answer_print(5)", "5")]
    records = []
    for i in range(5):
        cost = Cost(teacher_calls=2, teacher_tokens=10, teacher_prompt_tokens=90)  # 100 tokens each
        solved = TeacherEpisode(task_id=f"t{i}", steps=steps, final_answer="5", finished=True, cost=cost)
        records.append(teacher_record("r", "baseline_tokens", "reserve", Task(id=f"t{i}", question="q", true_answer=5),
                                      solved, True))
    assert records[0].teacher_spend["reserve_trajectories"].written_tokens == 10
    assert within_budget(records, 250) == (records[:3], 300)  # the third crosses the budget and is the last
    assert within_budget(records, 200) == (records[:2], 200)
    assert within_budget(records, 10_000) == (records, 500)  # the reserve runs out
    assert within_budget(records, 0) == ([], 0)


def test_equal_token_baseline_solves_only_the_reserve_tasks_its_budget_needs(redis_url, tmp_path):
    """The teacher solves what the budget buys at the cold start's mean cost (with a margin), then, where that
    falls short, more chunks in order; never the whole reserve. The chosen trajectories are those of solving it all."""
    import redis.asyncio as aioredis

    from services.coordinator.context import RunContext
    from services.coordinator.pools import Pools
    from services.coordinator.queue import StageQueue
    from services.coordinator.records import records_of, teacher_record
    from services.coordinator.stages.baseline import BaselineTokensStage, reserve_estimate, within_budget
    from services.coordinator.store import RunStore
    from shared.schemas.teacher import TeacherEpisode, TeacherRolloutResponse

    steps = [PLAN, act("final_answer_print(5)", "5")]
    reserve = [Task(id=f"r{i:03d}", question="q", true_answer=5) for i in range(200)]
    cost_of = {task.id: 100 + 50 * (i % 3) for i, task in enumerate(reserve)}  # 100, 150, 200 tokens: mean 150

    def solved(task, tokens):
        cost = Cost(teacher_calls=1, teacher_tokens=tokens // 10, teacher_prompt_tokens=tokens - tokens // 10)
        return TeacherEpisode(task_id=task.id, steps=steps, final_answer="5", finished=True, cost=cost)

    class Teacher:  # the teacher service's client; the stage's own logic and store are what is tested
        def __init__(self):
            self.solved_ids = []

        async def solve(self, tasks, max_turns):
            self.solved_ids += [t.id for t in tasks]
            return TeacherRolloutResponse(episodes=[solved(t, cost_of[t.id]) for t in tasks], cost=Cost(),
                                          engine="expert")

    class Services:
        def __init__(self):
            self.teacher = Teacher()

    async def scenario(budget, cold_cost):
        client = aioredis.Redis.from_url(redis_url)
        store = RunStore(client, tmp_path)
        run_id = f"tok{budget}-{cold_cost}"
        await store.create(run_id, RunConfig())
        services = Services()
        ctx = RunContext(run_id=run_id, config=RunConfig(), store=store, queue=StageQueue(client, "t"),
                         services=services, run_dir=tmp_path)
        ctx.__dict__["pools"] = Pools(bc_init=reserve[:4], train=[], rl=[], eval=[], reserve=reserve)
        cold = [teacher_record(run_id, "bc_init", "bc_init", t, solved(t, cold_cost), True) for t in reserve[:4]]
        await store.plan(run_id, "bc_init", ["bc_init-00000"])
        await store.record(run_id, "bc_init", "bc_init-00000", {"records": [r.model_dump(mode="json") for r in cold]})
        stage = BaselineTokensStage()
        stage.budget = lambda ctx: asyncio.sleep(0, budget)  # SCoRe's spend, which earlier stages measure
        items = await stage.plan(ctx)
        await store.plan(run_id, stage.name, [item.key for item in items])
        for item in items:  # what the stage's queue workers do with each planned item
            await store.record(run_id, stage.name, item.key, await stage.handle(ctx, item))
        planned = len(services.teacher.solved_ids)
        records = await stage.solved_until_spent(ctx, budget)
        assert [r.task.id for r in records_of(await store.results(run_id, stage.name))] == services.teacher.solved_ids
        await client.aclose()
        return planned, services.teacher.solved_ids, records

    # The cold start's mean (150) is the reserve's: 3,000 tokens buy 20 tasks; 25 + a chunk are planned.
    planned, solved_ids, records = asyncio.run(scenario(3_000, 150))
    cold = teacher_record("x", "bc_init", "bc_init", reserve[0], solved(reserve[0], 150), True)
    assert reserve_estimate(3_000, [cold], 200) == 33 and planned == 40  # whole chunks of 8
    assert solved_ids == [t.id for t in reserve[:40]]
    assert within_budget(records, 3_000)[1] == 3_150 and len(within_budget(records, 3_000)[0]) == 21
    # The cold start cost four times what the reserve does: the plan (24) falls short of the 41 tasks 6,000 tokens
    # buy, and chunks follow in order until they are solved.
    planned, solved_ids, records = asyncio.run(scenario(6_000, 600))
    assert planned == 24 and solved_ids == [t.id for t in reserve[:48]]
    everything = [teacher_record("x", "baseline_tokens", "reserve", t, solved(t, cost_of[t.id]), True)
                  for t in reserve]
    assert [r.task.id for r in within_budget(records, 6_000)[0]] == \
        [r.task.id for r in within_budget(everything, 6_000)[0]]
