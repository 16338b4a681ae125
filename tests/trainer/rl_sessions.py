"""Helpers for the trainer's RL tests: an in-process trainer app, made-up rollout samples and sessions."""

from __future__ import annotations

import random
import uuid

from services.trainer.app import create_app
from services.trainer.config import TrainerConfig
from shared.settings import Settings


def trainer_app(score_home, **settings):
    return create_app(TrainerConfig(device="cpu", settings=Settings(home=score_home, **settings)))


# The samples below are made up, not sampled (their logprobs are not the model's): no behaviour-logprob bound.
MADE_UP = {"max_logprob_diff": None}


def new_id(prefix="s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sample(reward: float, *, version: int = 0, length: int = 12, prompt_len: int = 4, seed: int = 0) -> dict:
    rng = random.Random(seed)
    mask = [0] * prompt_len + [1] * (length - prompt_len)
    return {
        "token_ids": [rng.randrange(3, 2000) for _ in range(length)],
        "loss_mask": mask,
        "logprobs": [-7.5 if bit else 0.0 for bit in mask],  # about uniform over the 2k vocabulary
        "policy_version": version,
        "reward": reward,
        "prompt_length": prompt_len,
    }


def batch(version: int = 0, rewards=((1.0, 0.0, 0.5), (0.0, 1.0)), **extra) -> dict:
    groups = [
        {"samples": [sample(r, version=version, seed=10 * g + i, length=10 + i) for i, r in enumerate(rs)]}
        for g, rs in enumerate(rewards)
    ]
    return {"groups": groups, **extra}


def create(client, **body) -> dict:
    body.setdefault("session_id", new_id())
    body.setdefault("hyperparameters", {**MADE_UP, "learning_rate": 1e-2})
    response = client.post("/v1/rl/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()
