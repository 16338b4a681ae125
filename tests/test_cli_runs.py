"""`score run`, `score status` against a real coordinator process, and `ServiceStack` starting and stopping."""

from __future__ import annotations

import os
import subprocess
import time

import psutil
import pytest

from tests.service_process import SCORE, ServiceProcess


@pytest.fixture
def coordinator(redis_url, tmp_path):
    # No stage workers: a run stays queued, which is all `run` and `status` need.
    service = ServiceProcess("coordinator", home=tmp_path / "home", log_dir=tmp_path,
                             env={"SCORE_REDIS_URL": redis_url, "SCORE_COORDINATOR_WORKERS": "0"})
    try:
        yield service.wait_ready(timeout_s=60)
    finally:
        service.stop()


def score(*args, url: str, cwd=None):
    env = {**os.environ, "SCORE_COORDINATOR_URL": url}
    env.pop("SCORE_API_TOKEN", None)
    return subprocess.run([SCORE, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_unknown_field_is_refused_with_its_name_and_line(coordinator, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("name: bad\ntasks:\n  n_train: 4\n  n_trian: 4\n")
    result = score("run", str(config), url=coordinator.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "n_trian" in result.stderr and "line 4" in result.stderr


def test_yaml_syntax_error_names_the_line(coordinator, tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("name: broken\ntasks:\n  n_train: [4\n  n_eval: 4\n")
    result = score("run", str(config), url=coordinator.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "YAML syntax error" in result.stderr and "line " in result.stderr


def test_run_prints_an_id_that_status_lists_and_details(coordinator, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("name: cli-test\ntasks:\n  n_bc_init: 2\n  n_train: 2\n  n_rl: 1\n  n_eval: 2\n")
    result = score("run", str(config), url=coordinator.url)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    assert run_id and len(run_id.split()) == 1

    listing = score("status", url=coordinator.url)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith(run_id))
    assert "cli-test" in row and "queued" in row

    detail = score("status", run_id, url=coordinator.url)
    assert detail.returncode == 0, detail.stderr
    assert f"run {run_id} (cli-test): queued" in detail.stdout
    for stage in ("bc_init", "mps", "sft", "rl", "eval_rl", "report"):
        assert any(line.split()[:1] == [stage] for line in detail.stdout.splitlines()), detail.stdout

    missing = score("status", "no-such-run", url=coordinator.url)
    assert missing.returncode == 1 and "no-such-run" in missing.stderr


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
    from shared.redis_server import free_port

    result = score("status", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach the coordinator" in result.stderr


@pytest.mark.slow
def test_service_stack_starts_and_stops_cleanly(tmp_path, monkeypatch):
    import httpx

    from services.launcher import ServiceStack, pick_ports

    monkeypatch.delenv("SCORE_REDIS_URL", raising=False)
    monkeypatch.delenv("SCORE_API_TOKEN", raising=False)
    stack = ServiceStack(home=tmp_path / "home", ports=pick_ports(prefer_defaults=False),
                         extra_args={"teacher": ["--engine", "expert"]}, threads=1)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # e.g. the session's test Redis
    try:
        stack.start()
        for name, url in stack.urls.items():
            assert httpx.get(f"{url}/ready", timeout=5).status_code == 200, name
            assert (tmp_path / "home" / "logs" / f"{name}.log").is_file()
        children = [p for p in me.children(recursive=True) if p.pid not in before]
        assert len(children) >= 5  # redis and the four services (plus the coordinator's workers)
        service_env = psutil.Process(stack.services["student"].process.pid).environ()
        assert service_env["OMP_NUM_THREADS"] == "1" and service_env["SCORE_REDIS_URL"] == stack.redis_url
    finally:
        stack.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [p for p in children if p.is_running() and p.status() != "zombie"]:
        time.sleep(0.2)
    left = [p for p in children if p.is_running() and p.status() != "zombie"]
    assert not left, [p.cmdline() for p in left]
