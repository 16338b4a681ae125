"""The warm launcher (services/trainer/sft/zygote.py): a forked training process trains exactly as a fresh one,
and a launcher that dies or cannot start costs at most the job it was running, never the next one."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from shared.settings import Settings
from services.trainer.app import create_app
from services.trainer.config import TrainerConfig
from services.trainer.sft.zygote import fork_hazards
from tests.service_process import fresh_home, process_alive
from tests.trainer.sft_jobs import gold_lines, progress

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WARM = "forked by the warm launcher"
SHORT = {"max_steps": 4, "learning_rate": 3e-3, "cpu_threads": 1, "micro_batch_tokens": 1024,
         "max_seq_length": 1024, "log_every_steps": 1, "warmup_ratio": 0.0}


def _wait(client, job_id, predicate, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(job)


def _started_message(client, job_id) -> str:
    events = [json.loads(line) for line in client.get(f"/v1/jobs/{job_id}/events").text.splitlines()]
    return next(e["message"] for e in events if "training process started" in e.get("message", ""))


def _app(home, warm_start=True):
    return TestClient(create_app(TrainerConfig(settings=Settings(home=home), poll_interval_s=0.2,
                                               warm_start=warm_start)))


def _rows(n):
    return [json.loads(line) for line in gold_lines(n)]


def test_the_imported_training_module_leaves_the_launcher_safe_to_fork():
    # What the launcher does before its first fork, in a process of its own (this one runs pytest's threads).
    code = ("import json; from services.trainer.sft.train import main; "
            "from services.trainer.sft.zygote import fork_hazards; print(json.dumps(fork_hazards()))")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_a_running_thread_is_a_fork_hazard():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert f"{threading.active_count()} Python threads" in fork_hazards()
    finally:
        stop.set()
        thread.join()


def test_warm_and_fresh_training_processes_train_identically(score_home, tmp_path):
    # LoRA: the adapter's initialisation draws from the RNG as well as the data order.
    body = {"dataset": {"rows": _rows(16)}, "hyperparameters": {**SHORT, "lora": True, "lora_r": 4, "lora_alpha": 8}}
    home = fresh_home(score_home, tmp_path)
    results = {}
    for warm_start in (True, False):
        with _app(home, warm_start) as client:
            job = client.post("/v1/jobs", json={**body, "output_name": f"warm-{warm_start}"}).json()
            done = _wait(client, job["id"], lambda j: j["state"] in ("succeeded", "failed", "cancelled"))
            assert done["state"] == "succeeded", done["error"]
            assert (WARM in _started_message(client, job["id"])) is warm_start
            job_dir = home / "trainer" / "jobs" / job["id"]
            results[warm_start] = ([r["metrics"]["loss"] for r in progress(job_dir)],
                                   load_file(Path(done["checkpoint"]["path"]) / "model.safetensors"))
    (warm_losses, warm_weights), (fresh_losses, fresh_weights) = results[True], results[False]
    assert len(warm_losses) == 4 and warm_losses[-1] < warm_losses[0]
    assert warm_losses == fresh_losses
    assert warm_weights.keys() == fresh_weights.keys()
    assert all(torch.equal(warm_weights[name], fresh_weights[name]) for name in warm_weights)


def test_a_killed_launcher_fails_its_job_and_the_next_job_still_runs(score_home, tmp_path):
    with _app(fresh_home(score_home, tmp_path)) as client:
        body = {"dataset": {"rows": _rows(8)}, "hyperparameters": {**SHORT, "max_steps": 10_000}}
        job = client.post("/v1/jobs", json=body).json()
        _wait(client, job["id"], lambda j: j["state"] == "running" and j["step"] >= 1)
        message = _started_message(client, job["id"])
        assert WARM in message
        child = int(message.split("(pid ")[1].split(",")[0])
        launcher = client.app.state.jobs.launcher.pid
        os.kill(launcher, signal.SIGKILL)

        failed = _wait(client, job["id"], lambda j: j["state"] != "running", timeout_s=30)
        assert failed["state"] == "failed"
        assert f"exited with {-signal.SIGKILL}" in failed["error"]
        assert not process_alive(child) and not process_alive(launcher)

        short = {"dataset": {"rows": _rows(8)}, "hyperparameters": SHORT}
        after = client.post("/v1/jobs", json=short).json()
        done = _wait(client, after["id"], lambda j: j["state"] in ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert WARM in _started_message(client, after["id"])  # from a new launcher
        assert client.app.state.jobs.launcher.pid not in (None, launcher)


def test_a_launcher_that_dies_while_starting_leaves_jobs_to_fresh_processes(score_home, tmp_path):
    with _app(fresh_home(score_home, tmp_path)) as client:
        jobs = client.app.state.jobs
        job = client.post("/v1/jobs", json={"dataset": {"rows": _rows(8)}, "hyperparameters": SHORT}).json()
        deadline = time.monotonic() + 30
        while (jobs.launcher.pid is None or jobs.launcher.state != "starting") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert jobs.launcher.state == "starting", "the launcher was ready before it could be killed while starting"
        os.kill(jobs.launcher.pid, signal.SIGKILL)

        done = _wait(client, job["id"], lambda j: j["state"] in ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        assert WARM not in _started_message(client, job["id"])
        assert jobs.launcher.state == "broken"
        again = client.post("/v1/jobs", json={"dataset": {"rows": _rows(8)}, "hyperparameters": SHORT}).json()
        assert _wait(client, again["id"], lambda j: j["state"] == "succeeded")
        assert WARM not in _started_message(client, again["id"])
