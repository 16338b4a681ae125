"""Run metrics, report.md, the PNG plots and the terminal results table, from hand-built records."""

from __future__ import annotations

import json
import time

import pytest

from services.coordinator.report import PLOTS, build_metrics, results_table, write_report
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import DeadLetter, RunInfo, RunState

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_ID = "run-test"


def _eval(success: float, n: int = 20, version: int | None = 1) -> dict:
    return {"success": success, "n": n, "solved": round(success * n), "answered": 0.9, "mean_turns": 3.5,
            "mean_tokens": 120.0, "policy_version": version}


def make_info(eval_results: dict | None = None, counters: dict | None = None, state=RunState.running) -> RunInfo:
    now = time.time()
    return RunInfo(
        id=RUN_ID, name="demo", state=state, created_at=now - 100, updated_at=now, artifacts="/tmp/x",
        config=RunConfig(), counters=counters or {},
        eval=eval_results if eval_results is not None else {
            "bc_init": _eval(0.25), "sft": _eval(0.4, version=2), "rl": _eval(0.5, version=5),
            "baseline": _eval(0.35, version=None), "teacher": _eval(0.95, version=None)},
    )


RL_STEPS = [
    {"step": i, "reward_mean": 0.2 + 0.1 * i, "policy_version": 3 + i,
     "rewards": {"correct": 2 + i, "equivalent": 3, "repeat": 4 - i, "other": 5, "no_answer": 2},
     "metrics": {"loss": 0.1, "kl": 0.0, "grad_norm": 1.0}}
    for i in range(3)
]
TIMING = {"stages": {"bc_init": 12.0, "mps": 30.5, "rl": 40.0}, "coordinator_overhead_s": 2.5,
          "overhead_share": 0.025, "wall_s": 100.0}
DEAD = [DeadLetter(stage="mps", item_key="train-arith-1", error="teacher timed out | twice", attempts=3, time=1.0)]



def test_metrics_counts(records):
    m = build_metrics(make_info(counters={"rl_prefixes": 2}), records, RL_STEPS, DEAD, TIMING)
    assert m["run_id"] == RUN_ID and m["name"] == "demo" and m["state"] == "running"
    assert m["wall_s"] == 100.0 and m["finished_at"] == pytest.approx(m["created_at"] + 100.0)
    assert set(m["eval"]) == {"bc_init", "sft", "rl", "baseline", "teacher"}
    mps = m["mps"]
    assert (mps["tasks"], mps["self_solved"], mps["repaired"], mps["hard"], mps["unsolved"]) == (5, 1, 2, 1, 1)
    assert mps["repairs_per_attempt"] == {"0": 1, "1": 2, "2": 1, "3": 1}
    # Non-hard repairs of every MPS record: train 2; 1, 2; 1, 1, 3 and RL pool 2; 1.
    assert mps["correction_step_histogram"] == {"0": 0, "1": 4, "2": 3, "3": 1}
    assert mps["teacher_tokens"] == 10 * 7 and mps["student_tokens"] == 40 + 50 + 60 + 30 + 70
    assert m["rl"]["prefixes"] == 2 and m["rl"]["steps"] == RL_STEPS
    assert m["key_step_rewards"] == {"correct": 9, "wrong_final": 0, "equivalent": 9, "repeat": 9, "other": 15, "no_answer": 6}
    assert m["teacher_tokens"] == {"bc_init": 310, "mps": 100, "baseline": 150}
    assert m["datasets"]["bc_init"] == 2 and m["datasets"]["baseline"] == 3
    assert m["timing"] == TIMING
    assert m["dead_letters"] == [DEAD[0].model_dump(mode="json")]
    json.dumps(m)


def test_metrics_prefers_counters_for_sft_rows_and_falls_back_without(records):
    assert build_metrics(make_info(counters={"sft_rows": 7}), records, [], [], {})["datasets"]["sft"] == 7
    fallback = build_metrics(make_info(), records, [], [], {})
    # Both repaired records always count; the one self-solved record only if its hash keeps it.
    assert fallback["datasets"]["sft"] in (2, 3)
    assert fallback["rl"]["prefixes"] == 2  # RL-pool records with a chosen step, counted without the counter


def test_metrics_of_a_finished_run_use_its_last_update(records):
    info = make_info(state=RunState.succeeded)
    m = build_metrics(info, records, [], [], {})
    assert m["finished_at"] == info.updated_at and m["wall_s"] == pytest.approx(info.updated_at - info.created_at)


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 5_000, path  # a rendered figure, not an empty image


def test_write_report_writes_metrics_plots_and_markdown(tmp_path, records):
    metrics = build_metrics(make_info(), records, RL_STEPS, DEAD, TIMING)
    paths = write_report(tmp_path, metrics)
    assert {p.name for p in paths} == {"metrics.json", "report.md", *PLOTS}
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for name in PLOTS:
        _assert_png(tmp_path / "plots" / name)
    report = (tmp_path / "report.md").read_text()
    assert RUN_ID in report and "demo" in report
    for label in ("bc_init", "sft", "rl", "baseline", "teacher"):
        assert f"| {label} |" in report
    for name in PLOTS:
        assert f"](plots/{name})" in report
    assert "| held-out success |" in report.replace("| policy ", "")
    assert "25.0%" in report and "95.0%" in report and "5/20" in report
    assert "train-arith-1" in report and "teacher timed out \\| twice" in report
    assert "step 0: 0.200" in report and "step 2: 0.400" in report
    assert "2.50%" in report  # the coordinator overhead share
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_sections_do_not_crash(tmp_path):
    info = make_info(eval_results={}, counters={})
    metrics = build_metrics(info, [], [], [], {})
    paths = write_report(tmp_path, metrics)
    for name in PLOTS:
        _assert_png(tmp_path / "plots" / name)
    report = (tmp_path / "report.md").read_text()
    assert "No held-out evaluations were recorded." in report
    assert "No RL step rewards were recorded." in report
    assert "Dead letters" not in report
    assert len(paths) == 2 + len(PLOTS)
    assert results_table(metrics) == "no held-out evaluations recorded"


def test_partial_eval_and_recovered_rl_step(tmp_path, records):
    # Only the cold start was evaluated, and an RL step the trainer replayed after a crash has no rewards.
    info = make_info(eval_results={"bc_init": {"success": 0.1, "n": 10, "solved": 1}})
    steps = [{"step": 0, "metrics": {}, "policy_version": 2, "rewards": {}, "recovered": True}]
    metrics = build_metrics(info, records, steps, [], {"stages": {}})
    write_report(tmp_path, metrics)
    report = (tmp_path / "report.md").read_text()
    assert "| bc_init |" in report and "| teacher |" not in report
    assert metrics["key_step_rewards"] == dict.fromkeys(("correct", "wrong_final", "equivalent", "repeat", "other", "no_answer"), 0)
    table = results_table(metrics)
    assert "bc_init" in table and "1/10" in table and table.count("\n") == 2


def test_a_run_evaluated_on_validation_tasks_never_reports_held_out_results(tmp_path, records):
    info = make_info()
    info.config.tasks.eval_split = "validation"
    metrics = build_metrics(info, records, RL_STEPS, [], TIMING)
    write_report(tmp_path, metrics)
    report = (tmp_path / "report.md").read_text()
    # The only mention of held-out tasks is the line saying these are not held-out results.
    assert metrics["eval_set"] == "validation" and report.lower().count("held-out") == 1
    assert "## Validation results" in report and "| validation success |" in report.replace("| policy ", "")
    assert results_table(metrics).splitlines()[0].split()[1:3] == ["validation", "success"]


def test_results_table_lists_every_policy_in_stage_order(records):
    table = results_table(build_metrics(make_info(), records, [], [], {}))
    lines = table.splitlines()
    assert lines[0].split()[0] == "policy" and "held-out success" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["bc_init", "sft", "rl", "baseline", "teacher"]
    assert "50.0%" in lines[4] and "10/20" in lines[4]


def test_report_html_inlines_every_plot_and_escapes_model_text(tmp_path, records):
    from services.coordinator.report_html import render_report_html

    hostile = DeadLetter(stage="mps", item_key="train-arith-9", error="<script>alert(1)</script>", attempts=3,
                         time=1.0)
    metrics = build_metrics(make_info(), records, RL_STEPS, [*DEAD, hostile], TIMING)
    write_report(tmp_path, metrics)
    page = render_report_html(tmp_path)
    assert page.startswith("<!doctype html>") and "<table>" in page and RUN_ID in page
    assert page.count('<img src="data:image/png;base64,') == len(PLOTS)
    assert "plots/" not in page  # no image needs a second request
    assert "<script>" not in page and "&lt;script&gt;" in page
