"""`score experiment --quick` end to end: real Redis, four real services, one run per seed, results from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.stats import wilson
from tests.service_process import fresh_home

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SCORE = str(Path(sys.executable).with_name("score"))
ROOT = Path(__file__).resolve().parents[1]
ARMS = {"cold_start", "score_sft", "score_rl", "baseline_equal_tokens", "baseline_equal_tasks", "control"}


def test_experiment_quick_compares_every_arm_on_one_held_out_set(score_home, tmp_path):
    home = fresh_home(score_home, tmp_path)
    result = subprocess.run([SCORE, "experiment", str(ROOT / "configs" / "experiment.yaml"), "--quick",
                             "--home", str(home)], capture_output=True, text=True, timeout=1700)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "paired differences (pooled over seeds)" in result.stdout
    [folder] = list((home / "experiments").iterdir())
    results = json.loads((folder / "results.json").read_text())
    assert set(results["arms"]) == ARMS
    held_out = None
    for arm, data in results["arms"].items():
        assert set(data["seeds"]) == {"0", "1"}, arm
        for seed in data["seeds"].values():
            # Every arm is evaluated on the same held-out tasks, and every figure follows from the outcomes.
            held_out = held_out or set(seed["outcomes"])
            assert set(seed["outcomes"]) == held_out and len(held_out) == 16
            assert seed["success"] == sum(seed["outcomes"].values()) / len(held_out)
            assert seed["ci95"] == list(wilson(sum(seed["outcomes"].values()), len(held_out)))
            assert seed["teacher_tokens"] > 0 and seed["optimizer_steps"] > 0
    # The equal-token baseline spent about SCoRe's teacher tokens; the control spent none beyond cold start.
    for seed in ("0", "1"):
        arms = {arm: results["arms"][arm]["seeds"][seed] for arm in ARMS}
        assert arms["control"]["teacher_tokens"] == arms["cold_start"]["teacher_tokens"]
        # (--quick's 16 reserve tasks may run out before SCoRe's spend is matched: never more than it, then.)
        assert arms["cold_start"]["teacher_tokens"] < arms["baseline_equal_tokens"]["teacher_tokens"]
        assert arms["baseline_equal_tokens"]["train_rows"] > 0
        sft_steps = arms["score_sft"]["optimizer_steps"]
        assert arms["control"]["optimizer_steps"] == arms["score_rl"]["optimizer_steps"] >= sft_steps
    pairs = {(c["arm"], c["versus"], c["seed"]) for c in results["comparisons"]}
    assert ("score_rl", "baseline_equal_tokens", "pooled") in pairs and ("score_sft", "cold_start", "0") in pairs
    assert (folder / "report.md").is_file() and (folder / "plots" / "success_by_arm.png").is_file()
