"""On-policy distillation through the real services: a run whose `opd` arm samples student episodes, has the
teacher model score them (`POST /v1/logprobs`) and trains on the reverse KL, at equal teacher tokens.

Processes: Redis, the student (built-in tiny student), a model teacher (`builtin:teacher-sft` in-process: the cold
start needs a teacher that solves tasks), the trainer and the coordinator with its workers. Tiny pools and budgets
keep the run to about a minute. Skipped, saying so, where the teacher model is not built (`.ci/run` builds it)."""

from __future__ import annotations

import json

import httpx
import pytest

from shared.models.builtin import is_current_builtin
from shared.redis_server import EmbeddedRedis
from tests.coordinator.run_helpers import QUICK_SFT, create_run, wait_run
from tests.service_process import ServiceProcess, fresh_home, model_services

pytestmark = pytest.mark.slow

OPD_RUN = {
    "name": "opd",
    "tasks": {"n_bc_init": 4, "n_train": 4, "n_rl": 8, "n_eval": 4},
    # The student starts as a copy of the teacher model, so its plans are right and its mistakes (sampled hot) come
    # in act steps: the teacher's corrections then leave verified prefixes for SCoRe-RL and SCoRe+OPD.
    "bc_init": {"base": "builtin:teacher-sft", "hyperparameters": QUICK_SFT}, "sft": {"hyperparameters": QUICK_SFT},
    "mps": {"max_turns": 6, "max_tokens": 96, "max_repairs": 1, "temperature": 1.5},
    "eval": {"max_turns": 2, "max_tokens": 24, "teacher": False},
    "rl": {"steps": 2, "prompts_per_step": 2, "group_size": 2, "max_turns": 2, "max_tokens": 24,
           "hyperparameters": {"learning_rate": 1e-3}},
    "score_opd": {"enabled": True, "teacher_kl_coef": 1.0}, "baseline": {"enabled": False},
    # 16 episodes a step read about 4,400 tokens and SCoRe's spend here is about 14,000 (at most ~50,000 where every
    # task takes a costly repair), so the budget runs out well before the cap of 16 steps; the rest settle at once.
    "opd": {"enabled": True, "steps": 16, "prompts_per_step": 4, "group_size": 4, "max_turns": 2, "max_tokens": 24,
            "eval_every": 2, "eval_tasks": 3,
            "hyperparameters": {"learning_rate": 1e-3, "teacher_kl_coef": 1.0, "max_staleness": 0}},
}


@pytest.fixture(scope="module")
def stack(score_home, tmp_path_factory):
    if not is_current_builtin("teacher-sft", score_home):
        pytest.skip("builtin:teacher-sft is not built for its current recipe in SCORE_HOME; build it with "
                    "`make teacher-model` (.ci/run does)")
    root = tmp_path_factory.mktemp("opd")
    home = fresh_home(score_home, root)
    env = {"OMP_NUM_THREADS": "1"}
    teacher_env = {**env, "SCORE_TEACHER_MAX_STEP_TOKENS": "128"}  # its steps fit; the student is capped lower
    server = EmbeddedRedis().start()
    try:
        with model_services(home, root, env=env, teacher_env=teacher_env,
                            teacher_args=("--engine", "transformers", "--model", "builtin:teacher-sft")) as services:
            coordinator = ServiceProcess("coordinator", home=home, log_dir=root, env={
                "SCORE_REDIS_URL": server.url, "SCORE_STUDENT_URL": services["student"].url,
                "SCORE_TEACHER_URL": services["teacher"].url, "SCORE_TRAINER_URL": services["trainer"].url,
                # Two worker processes: consecutive steps land on either, so a batch prepared ahead must reach the
                # other one (it travels through Redis).
                "SCORE_COORDINATOR_WORKERS": "2"}).wait_ready()
            try:
                yield {"home": home, "coordinator": coordinator, **services}
            finally:
                coordinator.stop()
    finally:
        server.stop()


def test_an_opd_arm_trains_on_teacher_scores_within_scores_teacher_tokens(stack):
    url = stack["coordinator"].url
    run_id = create_run(stack["coordinator"], OPD_RUN)
    run = wait_run(url, run_id, lambda r: r["state"] == "succeeded", 600, "the OPD run to finish")
    assert run["stages"]["opd"]["state"] == "done" and run["stages"]["eval_opd"]["state"] == "done"
    metrics = json.loads((stack["home"] / "runs" / run_id / "metrics.json").read_text())
    steps = metrics["opd"]["steps"]
    assert [s["step"] for s in steps] == list(range(OPD_RUN["opd"]["steps"]))
    trained = [s for s in steps if "metrics" in s]
    assert trained, steps
    budget = trained[0]["budget"]
    assert budget > 0  # SCoRe's teacher spend after cold start: the model teacher's corrections
    for step in trained:
        assert step["metrics"]["teacher_kl_coef"] == 1.0 and "teacher_kl" in step["metrics"]
        assert step["scored_tokens"] > 0
        assert set(step["seconds"]) == {"sampling", "scoring", "update", "waited", "wall"}
        assert not step["sampled_ahead"] and step["staleness"] == 0.0  # max_staleness 0: strictly on-policy
        assert step["teacher_spend"]["opd_scoring"]["prompt_tokens"] > step["scored_tokens"]
    # Equal teacher tokens: steps run while the spend so far is under the budget, the rest settle as skipped.
    for before, step in zip(steps, steps[1:]):
        assert ("skipped" in step) == (before["spent"] >= budget), (before, step)
    assert "skipped" in steps[-1] and trained[-1]["spent"] >= budget > trained[-2]["spent"]
    arm = metrics["arms"]["opd"]
    scored = sum(s["teacher_spend"]["opd_scoring"]["prompt_tokens"] for s in trained)
    cold_start = metrics["teacher_cost"]["by_purpose"]["cold_start_trajectories"]
    assert arm["teacher_tokens"] == scored + cold_start["prompt_tokens"] + cold_start["written_tokens"]
    assert arm["optimizer_steps"] == len(trained) and arm["train_rows"] == 16 * len(trained)
    assert metrics["teacher_cost"]["by_purpose"]["opd_scoring"]["stage"] == "opd"
    assert "opd" in metrics["eval"] and metrics["eval"]["opd"]["n"] == 4
    # Measured before the first update, every 2 steps after, and after the last trained one.
    curve = [(s["step"], when, point) for s in trained for when, point in s["eval"].items()]
    assert curve[0][:2] == (0, "before") and all(p["n"] == 3 and p["tokens"] > 0 for _, _, p in curve)
    assert (stack["home"] / "runs" / run_id / "plots" / "opd.png").is_file()
    assert "## On-policy distillation" in (stack["home"] / "runs" / run_id / "report.md").read_text()
    # SCoRe+OPD: SCoRe-RL's steps again from the SFT checkpoint, each with the teacher's reverse KL.
    assert metrics["rl"]["prefixes"] > 0, metrics["mps"]
    score_opd = metrics["score_opd"]["steps"]
    assert len(score_opd) == 2 and all("teacher_kl" in s["metrics"] for s in score_opd)
    assert all("teacher_kl" not in s["metrics"] for s in metrics["rl"]["steps"])
    assert metrics["teacher_cost"]["by_purpose"]["score_opd_scoring"]["prompt_tokens"] > 0
    assert metrics["arms"]["score_opd"]["teacher_tokens"] > metrics["arms"]["score_rl"]["teacher_tokens"]
    assert metrics["arms"]["score_opd"]["optimizer_steps"] == metrics["arms"]["score_rl"]["optimizer_steps"]
    assert "score_opd" in metrics["eval"]
    # The run ends serving the SCoRe policy, not a reference arm's last checkpoint.
    weights = httpx.get(f"{stack['student'].url}/v1/weights", timeout=10).json()
    assert f"{run_id}-opd" not in weights["path"] and f"{run_id}-score_opd" not in weights["path"]


def test_streamed_steps_train_on_batches_sampled_during_the_previous_update(stack):
    """max_staleness 1: each OPD and SCoRe-RL step after the first trains on episodes sampled (and scored, or
    rewarded) while the previous step's update ran, one policy version old (the trainer's `staleness/mean`), and
    OPD's equal-token stop is unchanged: no batch is scored ahead of the step that spends the budget."""
    config = {**OPD_RUN, "name": "opd-streamed", "score_opd": {"enabled": False},
              "rl": {**OPD_RUN["rl"], "hyperparameters": {"learning_rate": 1e-3, "max_staleness": 1}},
              "opd": {**OPD_RUN["opd"], "eval_every": 0,
                      "hyperparameters": {**OPD_RUN["opd"]["hyperparameters"], "max_staleness": 1}}}
    scored_before = teacher_scored_tokens(stack)
    run_id = create_run(stack["coordinator"], config)
    wait_run(stack["coordinator"].url, run_id, lambda r: r["state"] == "succeeded", 600, "the streamed OPD run")
    metrics = json.loads((stack["home"] / "runs" / run_id / "metrics.json").read_text())
    rl = metrics["rl"]["steps"]
    assert [(s["sampled_ahead"], s["metrics"]["staleness/mean"]) for s in rl] == [(False, 0.0), (True, 1.0)], rl
    trained = [s for s in metrics["opd"]["steps"] if "metrics" in s]
    assert len(trained) >= 2, metrics["opd"]["steps"]
    assert not trained[0]["sampled_ahead"] and trained[0]["metrics"]["staleness/mean"] == 0.0
    for step in trained[1:]:
        assert step["sampled_ahead"] and step["metrics"]["staleness/mean"] == 1.0 == step["staleness"], step
        assert step["teacher_spend"]["opd_scoring"]["prompt_tokens"] > step["scored_tokens"] > 0
    budget = trained[0]["budget"]
    assert trained[-1]["spent"] >= budget > trained[-2]["spent"]
    assert all("skipped" in s for s in metrics["opd"]["steps"][len(trained):])
    # The teacher scored exactly the trained batches (and the one token of the start-up probe): nothing was scored
    # ahead for a step that never trained.
    assert teacher_scored_tokens(stack) - scored_before == sum(s["scored_tokens"] for s in trained) + 1


def teacher_scored_tokens(stack) -> int:
    text = httpx.get(f"{stack['teacher'].url}/metrics", timeout=10).text
    line = next(l for l in text.splitlines() if l.startswith('score_teacher_total{counter="scored_tokens"'))
    return int(float(line.rsplit(" ", 1)[1]))
