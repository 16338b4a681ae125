"""Experiment results from per-task outcomes: arms per seed, Wilson intervals, paired comparisons, the report."""

from __future__ import annotations

import json

from services.coordinator.experiment_results import build_results, table, write_results
from shared.stats import mcnemar_exact, wilson

TASKS = [f"t{i:03d}" for i in range(40)]


def metrics(seed: int, solved: dict[str, int]) -> dict:
    """A run's metrics as the report stage writes them: eval outcomes per label and each arm's cost."""
    labels = {"cold_start": "bc_init", "score_sft": "sft", "score_rl": "rl", "baseline_equal_tokens": "baseline_tokens"}
    evals, arms = {}, {}
    for arm, label in labels.items():
        outcomes = {t: int(i < solved[arm]) for i, t in enumerate(TASKS)}
        evals[label] = {"success": solved[arm] / len(TASKS), "n": len(TASKS), "outcomes": outcomes}
        arms[arm] = {"label": label, "teacher_tokens": 1000 + seed, "teacher_prompt_tokens": 900,
                     "teacher_written_tokens": 100 + seed, "train_rows": 10, "optimizer_steps": 5}
    return {"run_id": f"run-{seed}", "eval": evals, "arms": arms}


def test_results_hold_outcomes_and_recomputable_comparisons(tmp_path):
    by_seed = {"0": metrics(0, {"cold_start": 8, "score_sft": 12, "score_rl": 16, "baseline_equal_tokens": 14}),
               "1": metrics(1, {"cold_start": 10, "score_sft": 10, "score_rl": 20, "baseline_equal_tokens": 20})}
    results = build_results("exp-x", {"seeds": [0, 1]}, by_seed)
    assert list(results["arms"]) == ["cold_start", "score_sft", "score_rl", "baseline_equal_tokens"]
    assert results["held_out_tasks"] == 40
    seed0 = results["arms"]["score_rl"]["seeds"]["0"]
    assert seed0["success"] == 16 / 40 and seed0["ci95"] == list(wilson(16, 40))
    assert set(seed0["outcomes"]) == set(TASKS) and seed0["teacher_tokens"] == 1000
    assert results["arms"]["score_rl"]["pooled"]["solved"] == 36

    def find(arm, versus, seed):
        return next(c for c in results["comparisons"] if (c["arm"], c["versus"], c["seed"]) == (arm, versus, seed))

    # Nested outcomes: RL solves tasks 0-15, SFT 0-11 on seed 0, so 4 discordant pairs all one way.
    c = find("score_rl", "score_sft", "0")
    assert (c["diff"], c["arm_only"], c["versus_only"]) == (4 / 40, 4, 0)
    assert c["p"] == mcnemar_exact(4, 0) == 2 / 16
    pooled = find("score_rl", "score_sft", "pooled")
    assert pooled["diff"] == (4 + 10) / 80 and pooled["ci95"][0] > 0
    tie = find("score_rl", "baseline_equal_tokens", "1")
    assert tie["diff"] == 0 and tie["p"] == 1.0 and tie["ci95"] == [0.0, 0.0]
    # Arms missing from the runs are left out, not invented.
    assert not any(c["versus"] == "control" for c in results["comparisons"])

    write_results(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text()) == results
    report = (tmp_path / "report.md").read_text()
    assert "| score_rl | score_sft | pooled |" in report and "plots/success_by_arm.png" in report
    for plot in ("success_by_arm", "paired_differences"):
        assert (tmp_path / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert "score_rl - score_sft: +17.5%" in table(results)


def test_an_experiment_on_validation_tasks_says_so_and_never_reports_held_out_results(tmp_path):
    by_seed = {"0": metrics(0, {"cold_start": 8, "score_sft": 12, "score_rl": 16, "baseline_equal_tokens": 14})}
    config = {"seeds": [0], "run": {"tasks": {"eval_split": "validation"}}}
    write_results(tmp_path, build_results("exp-v", config, by_seed))
    report = (tmp_path / "report.md").read_text()
    assert "validation tasks: 40" in report and "Paired over the same validation tasks" in report
    # The only mention of held-out tasks is the line saying these are not held-out results.
    assert report.lower().count("held-out") == 1


def test_wilson_bounds_are_exact_at_none_and_all_solved():
    for n in range(1, 1001):
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0, n
        for k in (1, n // 2, n - 1):
            lo, hi = wilson(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n)


def test_an_arm_that_solves_nothing_is_plotted(tmp_path):
    # Five seeds of 40 tasks: 0 of 200 is where the computed lower bound used to come out at 1e-17 above 0, which
    # made the bar's error extent negative and the plot raise.
    by_seed = {str(s): metrics(s, {"cold_start": 0, "score_sft": 12, "score_rl": 16, "baseline_equal_tokens": 40})
               for s in range(5)}
    results = build_results("exp-zero", {"seeds": list(range(5))}, by_seed)
    assert results["arms"]["cold_start"]["pooled"]["ci95"][0] == 0.0
    assert results["arms"]["baseline_equal_tokens"]["pooled"]["ci95"][1] == 1.0
    write_results(tmp_path, results)
    assert (tmp_path / "plots" / "success_by_arm.png").read_bytes()[:4] == b"\x89PNG"
