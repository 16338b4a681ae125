"""Behaviour log-probabilities the trainer can trust: what the student service returns with an episode equals
what the trainer recomputes for the same tokens with the same weights (the mismatch that collapses RL)."""

import pytest
import torch
from fastapi.testclient import TestClient

from services.student.app import create_app
from services.trainer.grpo.step import grpo_step, pad_mini_batch, per_token_logps
from services.trainer.optim import build_optimizer
from shared.models.loading import load_trainable_causal_lm
from shared.schemas.agent import Episode
from shared.schemas.rl import GRPOHyperparameters, RLSample
from shared.tasks.builtin import builtin_tasks
from tests.student.conftest import student_config


@pytest.fixture(scope="module")
def episodes(score_home):
    """Multi-turn episodes from the student service (prefix cache on, several episodes batched together)."""
    tasks = builtin_tasks(split="eval", n=3, seed=5)
    body = {
        "items": [{"task": t.model_dump(mode="json")} for t in tasks], "n": 2, "max_turns": 3,
        "sampling": {"temperature": 1.0, "max_tokens": 24, "seed": 11},
    }
    with TestClient(create_app(student_config(score_home, prefix_cache_mb=64))) as client:
        response = client.post("/v1/rollouts", json=body)
        assert response.status_code == 200, response.text
        weights = client.get("/v1/weights").json()
    episodes = [Episode.model_validate(e) for e in response.json()["episodes"]]
    assert any(sum(e.loss_mask) > 24 for e in episodes)  # some episode has more than one model turn
    return episodes, weights["path"]


def test_service_logprobs_match_the_trainers_recomputation(episodes):
    episodes, path = episodes
    hp = GRPOHyperparameters()
    policy = load_trainable_causal_lm(path, hp, device="cpu")  # as an RL session loads its policy
    samples = [RLSample.from_episode(e, reward=float(i % 2)) for i, e in enumerate(episodes)]
    batch = pad_mini_batch(samples, torch.zeros(len(samples)), pad_id=0, device="cpu")  # right-padded together
    with torch.no_grad():
        recomputed, _ = per_token_logps(policy, batch)
    mask = batch.completion_mask
    difference = ((recomputed - batch.old_per_token_logps).abs() * mask).sum() / mask.sum()
    assert mask.sum() > 0
    assert difference.item() <= 1e-4

    # The GRPO step reports the same check, and keeps every sample.
    optimizer = build_optimizer(policy, hp)  # as an RL session builds its optimizer
    metrics = grpo_step(policy, optimizer, [samples[:2], samples[2:4], samples[4:]], hp, pad_id=0)
    assert metrics["logprob_diff/mean"] <= 1e-4
    assert metrics["logprob_diff/checked_samples"] == len(samples)
    assert metrics["logprob_diff/dropped_samples"] == 0
