"""Jobs with real training processes, in-process app: cancelling a running job stops its process; a process
that fails marks the job failed with the reason."""

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shared.settings import Settings
from services.trainer.app import create_app
from services.trainer.config import TrainerConfig
from tests.trainer.sft_jobs import gold_lines
from tests.service_process import fresh_home, process_alive

pytestmark = pytest.mark.slow


def _wait(client, job_id, predicate, timeout_s=90):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.2)
    raise TimeoutError(job)


@pytest.fixture
def client(score_home, tmp_path):
    home = fresh_home(score_home, tmp_path)
    with TestClient(create_app(TrainerConfig(settings=Settings(home=home), poll_interval_s=0.2))) as client:
        yield client


def _rows(n):
    return [json.loads(line) for line in gold_lines(n)]


def test_cancel_stops_the_running_training_process(client):
    body = {"dataset": {"rows": _rows(8)}, "hyperparameters": {"max_steps": 10_000, "cpu_threads": 1,
                                                                "micro_batch_tokens": 1024, "max_seq_length": 1024}}
    job = client.post("/v1/jobs", json=body).json()
    running = _wait(client, job["id"], lambda j: j["state"] == "running" and j["step"] >= 1)
    pid = int(client.get(f"/v1/jobs/{job['id']}/events").text.split("(pid ")[1].split(",")[0])
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and running["total_steps"] == 10_000

    assert not process_alive(pid)
    time.sleep(0.5)  # the watcher must not resurrect or fail a cancelled job
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelled"


def test_a_failing_training_process_fails_the_job_with_its_reason(client, student_model_dir):
    base = Path(tempfile.mkdtemp(prefix="corrupt-base-", dir=client.app.state.settings.home))  # under SCORE_HOME
    shutil.copytree(student_model_dir, base, dirs_exist_ok=True)
    (base / "model.safetensors").write_bytes(b"not a safetensors file")  # passes the service's checks, fails to load
    job = client.post("/v1/jobs", json={"base": str(base), "dataset": {"rows": _rows(2)}}).json()
    failed = _wait(client, job["id"], lambda j: j["state"] in ("failed", "succeeded"))
    assert failed["state"] == "failed"
    assert "exited with 1" in failed["error"] and "Error" in failed["error"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409  # failed is terminal
