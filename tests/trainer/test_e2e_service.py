"""The trainer as a real process: kill -9 mid-job (its warm launcher and training process die with it) and the
restarted service resumes the job and finishes it."""

import time
from pathlib import Path

import httpx
import pytest

from tests.service_process import ServiceProcess, fresh_home, process_alive
from tests.trainer.sft_jobs import gold_lines, wait_for, write_dataset

pytestmark = pytest.mark.slow


def test_kill_9_mid_job_then_restart_resumes_and_finishes(score_home, tmp_path):
    home = fresh_home(score_home, tmp_path)
    dataset = write_dataset(home / "datasets" / "gold.jsonl", gold_lines(32))
    body = {
        "dataset": {"path": str(dataset)}, "job_id": "resume-me", "output_name": "resume-test",
        # The built-in student trains ~30 steps/s on one thread: 200 steps leave several seconds between the kill
        # (at step 12 or so) and the end, so the first process cannot finish and publish before it dies.
        "hyperparameters": {"max_steps": 200, "num_epochs": 10, "save_every_steps": 10, "learning_rate": 3e-3,
                            "cpu_threads": 1, "micro_batch_tokens": 1024, "max_seq_length": 1024},
    }
    first = ServiceProcess("trainer", home=home, log_dir=tmp_path).wait_ready()
    try:
        created = httpx.post(f"{first.url}/v1/jobs", json=body, timeout=30)
        assert created.status_code == 201, created.text
        job_url = f"{first.url}/v1/jobs/resume-me"
        wait_for(job_url, lambda j: j["step"] >= 12, 120, "step 12 (past the intermediate state at step 10)")
        events = httpx.get(f"{job_url}/events", timeout=10).text
        child_pid = int(events.split("training process started (pid ")[1].split(",")[0])
        # Forked by the warm launcher, the service's own child: the kill must take both.
        parent_pid = int(Path(f"/proc/{child_pid}/status").read_text().split("PPid:")[1].split()[0])
        assert "forked by the warm launcher" in events and parent_pid != first.process.pid
        first.process.kill()  # SIGKILL: no shutdown code runs
        first.process.wait(10)
    finally:
        first.stop()
    deadline = time.monotonic() + 10
    while (process_alive(child_pid) or process_alive(parent_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_alive(child_pid), "the training process outlived the killed service"
    assert not process_alive(parent_pid), "the warm launcher outlived the killed service"
    result = home / "trainer" / "jobs" / "resume-me" / "result.json"
    assert not result.exists(), "the job finished before the kill: nothing was left to resume (make it longer)"

    second = ServiceProcess("trainer", home=home, log_dir=tmp_path).wait_ready()
    try:
        job_url = f"{second.url}/v1/jobs/resume-me"
        listed = httpx.get(f"{second.url}/v1/jobs", timeout=10).json()["jobs"]
        assert [j["id"] for j in listed] == ["resume-me"]
        done = wait_for(job_url, lambda j: j["state"] == "succeeded", 300, "the resumed job to finish")
        assert done["resumed_from_step"] is not None and done["resumed_from_step"] >= 10
        assert done["attempts"] == 2
        assert done["step"] == done["total_steps"] == 200
        assert done["checkpoint"]["name"] == "resume-test" and done["checkpoint"]["version"] == 1
        assert (Path(done["checkpoint"]["path"]) / "model.safetensors").is_file()
        events = httpx.get(f"{job_url}/events", timeout=10).text.splitlines()
        assert any("service restarted" in line for line in events)
        # Idempotent creation across the restart: the same job id returns the finished job.
        again = httpx.post(f"{second.url}/v1/jobs", json=body, timeout=30)
        assert again.status_code == 200 and again.json()["state"] == "succeeded"
    finally:
        second.stop()
