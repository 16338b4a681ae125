"""The reference every log-probability test compares with: plain transformers, one sequence at a time."""

from __future__ import annotations

import torch

from shared.models.loading import load_causal_lm


def plain_logprobs(model_dir, sequences: list[list[int]]) -> list[torch.Tensor]:
    """log p(token t | tokens < t) for t = 1..L-1 of each sequence ((L-1,) each): one forward pass per sequence,
    no padding, no cache, fp32."""
    model, _ = load_causal_lm(model_dir, device="cpu", dtype=torch.float32)
    out = []
    with torch.no_grad():
        for tokens in sequences:
            ids = torch.tensor([tokens])
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            out.append(logp[:-1].gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1))
    return out
