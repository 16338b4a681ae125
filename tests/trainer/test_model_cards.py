"""The trainer writes a model card into every checkpoint it publishes: an SFT job's output (real training
process) and each GRPO step's version, whose lineage goes through the SFT checkpoint it started from. The folders
still load with transformers as they are."""

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.trainer.app import create_app
from services.trainer.config import TrainerConfig
from shared.model_card import read_card
from shared.settings import Settings
from tests.service_process import fresh_home
from tests.trainer.rl_sessions import MADE_UP, batch
from tests.trainer.sft_jobs import gold_lines, write_dataset

pytestmark = pytest.mark.slow


@pytest.fixture
def client(score_home, tmp_path):
    home = fresh_home(score_home, tmp_path)
    config = TrainerConfig(device="cpu", settings=Settings(home=home), poll_interval_s=0.2)
    with TestClient(create_app(config)) as client:
        yield client


def _finished(client, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise TimeoutError(job)


def assert_loads(directory: str) -> None:
    AutoModelForCausalLM.from_pretrained(directory)
    AutoTokenizer.from_pretrained(directory)


def test_sft_and_grpo_checkpoints_carry_cards_with_their_lineage(client):
    home = client.app.state.settings.home
    dataset = write_dataset(home / "datasets" / "gold-24.jsonl", gold_lines(24))
    job = client.post("/v1/jobs", json={
        "dataset": {"path": str(dataset)}, "output_name": "cards-sft", "hyperparameters": {
            "max_steps": 2, "learning_rate": 3e-3, "micro_batch_tokens": 1024, "max_seq_length": 1024,
            "cpu_threads": 1}}).json()
    job = _finished(client, job["id"])
    assert job["state"] == "succeeded", job
    sft_dir = job["checkpoint"]["path"]
    front, body = read_card(sft_dir)
    assert front["library_name"] == "transformers" and front["tags"] == ["score", "sft"]
    assert front["base_model"] == "builtin:student" and front["score"]["lineage"] == ["builtin:student"]
    assert front["score"]["checkpoint"] == "cards-sft/v1" and front["score"]["job"] == job["id"]
    assert "| dataset | gold-24.jsonl |" in body and "| conversations | 24 |" in body
    assert "| optimizer steps | 2 |" in body and "| tokens per epoch |" in body
    assert "| learning\\_rate | 0.003 |" in body and "| loss |" in body
    assert_loads(sft_dir)

    # GRPO from the SFT series by name: each step's version names the one before it, down to the built-in model.
    session = client.post("/v1/rl/sessions", json={
        "base": "cards-sft", "output_name": "cards-rl", "hyperparameters": {**MADE_UP, "learning_rate": 1e-2}}).json()
    steps = [client.post(f"/v1/rl/sessions/{session['id']}/steps", json=batch(version=v)).json() for v in (0, 1)]
    first, second = (read_card(step["checkpoint"]["path"]) for step in steps)
    assert first[0]["base_model"] == "cards-sft/v1" and first[0]["tags"] == ["score", "grpo"]
    assert second[0]["score"]["lineage"] == ["cards-rl/v1", "cards-sft/v1", "builtin:student"]
    assert second[0]["score"]["job"] == f"rl:{session['id']}"
    body = second[1]
    assert "| session step | 2 |" in body and "| policy version | 2 |" in body
    assert "| prompts this step | 2 |" in body and "| rollouts this step | 5 |" in body
    assert "| prompts over the session | 4 |" in body and "| rollouts over the session | 10 |" in body
    assert "| epsilon | 0.2 |" in body and "| reward/mean |" in body
    assert_loads(steps[1]["checkpoint"]["path"])


def test_a_lora_adapter_is_published_with_a_peft_card(client):
    session = client.post("/v1/rl/sessions", json={
        "hyperparameters": {**MADE_UP, "learning_rate": 1e-2, "lora": True, "lora_r": 4}}).json()
    step = client.post(f"/v1/rl/sessions/{session['id']}/steps", json=batch()).json()
    directory = Path(step["checkpoint"]["path"])
    front, body = read_card(directory)
    assert (directory / "adapter_config.json").is_file()
    assert front["library_name"] == "peft" and front["base_model_relation"] == "adapter"
    assert "lora" in front["tags"] and "More Information Needed" not in body  # PEFT's template card replaced
