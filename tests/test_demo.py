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

import httpx
import pytest
import yaml

from tests.service_process import fresh_home

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


def _generated_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("score_generated_tokens_total{"))


def test_the_remote_teacher_calls_its_own_openai_compatible_engine_process(score_home, tmp_path):
    """`--teacher remote`: the teacher service answers through `--engine openai`, and the tokens are written by
    a separate `score serve student` process serving the teacher's checkpoint (the untrained tiny teacher here,
    which needs no build: the wiring is under test, not the answers)."""
    from services.cli.teachers import TEACHER_ENGINE, make_stack
    from services.launcher import pick_ports
    from shared.tasks.builtin import builtin_tasks

    home = fresh_home(score_home, tmp_path)
    stack = make_stack("remote", home, pick_ports(prefer_defaults=False), model="builtin:teacher")
    assert stack.order[0] == TEACHER_ENGINE and stack.services[TEACHER_ENGINE].kind == "student"
    try:
        stack.start(services=[TEACHER_ENGINE, "teacher"])
        engine_url, teacher_url = stack.services[TEACHER_ENGINE].url, stack.services["teacher"].url
        before = _generated_tokens(engine_url)
        tasks = builtin_tasks(n=2, seed=5)
        body = {"items": [{"task": task.model_dump(mode="json")} for task in tasks], "max_turns": 1}
        response = httpx.post(f"{teacher_url}/v1/rollouts", json=body, timeout=300)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["engine"] == "openai"
        assert [episode["task_id"] for episode in result["episodes"]] == [task.id for task in tasks]
        written = result["cost"]["teacher_tokens"]
        assert written > 0 and result["cost"]["teacher_prompt_tokens"] > 0
        # Every token the teacher reports was generated by the engine process, not in the teacher service.
        assert _generated_tokens(engine_url) - before == written
        assert "--engine openai --base-url " + engine_url in stack.services["teacher"].log_path.read_text()
    finally:
        stack.stop()
    assert not any(stack.alive().values())
