"""Rollout samples whose behaviour log-probabilities are a model's own, and the optimizer GRPO steps use."""

from __future__ import annotations

import torch

from services.trainer.optim import build_optimizer
from shared.schemas.rl import GRPOHyperparameters, RLSample


def behaviour_samples(model, rewards: list[float], *, seed: int = 0, prompt_len: int = 5) -> list[RLSample]:
    """Samples of varying lengths whose logprobs are the model's own (ratio 1, as fresh on-policy rollouts)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index, reward in enumerate(rewards):
        length = prompt_len + 4 + 3 * index
        token_ids = torch.randint(3, 2000, (length,), generator=generator)
        with torch.no_grad():
            logp = torch.log_softmax(model(token_ids.unsqueeze(0)).logits[0].float(), -1)
        # prompt tokens, then generated tokens with one masked "observation" token in the middle
        loss_mask = [0] * prompt_len + [1] * (length - prompt_len)
        loss_mask[prompt_len + 2] = 0
        logprobs = [0.0] + [logp[t - 1, token_ids[t]].item() for t in range(1, length)]
        logprobs = [lp if bit else 0.0 for lp, bit in zip(logprobs, loss_mask)]
        samples.append(RLSample(
            token_ids=token_ids.tolist(), loss_mask=loss_mask, logprobs=logprobs, policy_version=0, reward=reward,
        ))
    return samples


def adamw(model, lr=1e-3):
    return build_optimizer(model, GRPOHyperparameters(learning_rate=lr))
