"""`score demo --quick` end to end, as a user runs it: real Redis, four real services, the whole pipeline.

It runs with SCORE_API_TOKEN set, so every call between the services carries the bearer token; while it runs,
the test checks that each service refuses a request without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from tests.service_process import ServiceProcess, fresh_home
from tests.trainer.sft_jobs import gold_conversations

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCORE = str(Path(sys.executable).with_name("score"))
ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"bc_init", "sft", "rl", "baseline", "teacher"}
TOKEN = "demo-test-token-5c1e"


def check_auth(urls: dict[str, str]) -> None:
    for name, url in urls.items():
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 401, name
        authed = httpx.get(f"{url}/ready", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert authed.status_code == 200, (name, authed.text)


def test_demo_quick_runs_every_stage_and_writes_the_report(score_home, tmp_path):
    home = fresh_home(score_home, tmp_path)
    env = {**os.environ, "SCORE_API_TOKEN": TOKEN}
    stderr = tmp_path / "demo.stderr"
    with stderr.open("w") as err, subprocess.Popen([SCORE, "demo", "--quick", "--home", str(home)], env=env,
                                                    stdout=subprocess.PIPE, stderr=err, text=True) as demo:
        lines, checked = [], False
        try:
            for line in demo.stdout:
                lines.append(line)
                if line.startswith("services ready"):
                    check_auth(dict(re.findall(r"(\w+) (http://[\d.:]+)", line)))
                    checked = True
            demo.wait(timeout=900)
        finally:
            demo.kill()
    out = "".join(lines)
    assert demo.returncode == 0, out[-4000:] + stderr.read_text()[-4000:]
    assert checked, out[-2000:]
    assert "run succeeded" in out and "held-out success" in out
    for policy in POLICIES:
        assert f"\n{policy} " in out  # a row of the results table

    config = yaml.safe_load((ROOT / "configs" / "demo-quick.yaml").read_text())
    [run_dir] = list((home / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["eval"]) == POLICIES
    assert all(result["n"] == config["tasks"]["n_eval"] for result in metrics["eval"].values())
    assert metrics["eval"]["teacher"]["success"] == 1.0  # the scripted expert solves the held-out tasks
    assert metrics["mps"]["tasks"] == config["tasks"]["n_train"]
    assert len(metrics["rl"]["steps"]) == config["rl"]["steps"]
    assert metrics["timing"]["coordinator_overhead_s"] > 0
    # Teacher cost is counted for the scripted expert too (what a model teacher would have spent), by purpose.
    cost = metrics["teacher_cost"]
    assert cost["by_purpose"]["cold_start_trajectories"]["written_tokens"] > 0
    assert cost["score"]["prompt_tokens"] > cost["score"]["written_tokens"] > 0
    assert "95% CI (Wilson)" in out
    # Each evaluated student checkpoint's model card holds its held-out result, under the run and policy label.
    from shared.model_card import read_card

    for label, result in metrics["eval"].items():
        assert (result["checkpoint"] is None) == (label == "teacher"), (label, result)
        if result["checkpoint"] is not None:
            front, _ = read_card(result["checkpoint"])
            rows = [e for e in front["score"]["evaluations"] if (e["run"], e["label"]) == (metrics["run_id"], label)]
            assert [(r["solved"], r["n"]) for r in rows] == [(result["solved"], result["n"])], (label, front)
    report = (run_dir / "report.md").read_text()
    for plot in ("success_by_stage", "rl_reward", "correction_steps", "repairs_per_attempt", "key_step_rewards"):
        data = (run_dir / "plots" / f"{plot}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"plots/{plot}.png" in report


def test_the_tiny_teacher_is_trained_on_the_trainer_then_reused(score_home, tmp_path, monkeypatch, capsys):
    """`score demo --teacher tiny`'s first step against a real trainer, on a small dataset so it takes seconds."""
    from services.cli import stack as cli_stack

    home = fresh_home(score_home, tmp_path)
    rows = [json.loads(line) for line in gold_conversations(4)]
    hyperparameters = {"max_steps": 2, "cpu_threads": 1, "micro_batch_tokens": 1024, "max_seq_length": 1024}
    monkeypatch.setattr(cli_stack, "teacher_dataset", lambda: (rows, "0123456789abcdef" * 4,
                                                               {"hyperparameters": hyperparameters}))
    trainer = ServiceProcess("trainer", home=home, log_dir=tmp_path, env={"SCORE_TRAINER_POLL_INTERVAL_S": "0.2"})
    try:
        services = SimpleNamespace(services={"trainer": trainer.wait_ready()}, headers=dict)
        trained = cli_stack.tiny_teacher(services, home)
        out = capsys.readouterr().out
        assert (trained / "config.json").is_file() and trained.parent.name == "demo-teacher", out
        assert "teacher: SFT step 1/2, loss " in out and "tiny teacher published as demo-teacher/v1" in out
        assert cli_stack.tiny_teacher(services, home) == trained
        assert "reusing the tiny teacher demo-teacher/v1" in capsys.readouterr().out
    finally:
        trainer.stop()
