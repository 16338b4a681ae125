"""Pure sampling helpers for batched generation with per-row parameters."""

from __future__ import annotations

import torch

# Temperatures below this sample greedily: dividing float32 logits by a near-zero temperature (any value the
# schema allows, down to 1e-38) overflows to inf, and softmax turns that into NaN probabilities.
MIN_TEMPERATURE = 1e-6


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask logits outside each row's nucleus. logits (B, V), top_p (B,) in (0, 1]."""
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) probability mass strictly above each token
    drop_sorted = mass_before > top_p.unsqueeze(-1)  # the first token is never dropped
    drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """One token per row. logits (B, V) float32; temperature (B,), 0 (below MIN_TEMPERATURE) = greedy;
    returns (B,) long."""
    greedy = logits.argmax(dim=-1)
    sampled_rows = (temperature >= MIN_TEMPERATURE).nonzero(as_tuple=True)[0]
    if sampled_rows.numel() == 0:
        return greedy
    rows_logits = logits[sampled_rows] / temperature[sampled_rows].unsqueeze(-1)
    if bool((top_p[sampled_rows] < 1.0).any()):
        rows_logits = top_p_filter(rows_logits, top_p[sampled_rows])
    probs = torch.softmax(rows_logits, dim=-1)
    chosen = greedy.clone()
    unseeded = [i for i, row in enumerate(sampled_rows.tolist()) if generators[row] is None]
    if unseeded:
        picks = torch.multinomial(probs[unseeded], 1).squeeze(-1)
        chosen[sampled_rows[unseeded]] = picks
    for i, row in enumerate(sampled_rows.tolist()):
        generator = generators[row]
        if generator is not None:
            # Seeded rows draw from their own generator so a seed reproduces whatever the batch around it.
            chosen[row] = torch.multinomial(probs[i], 1, generator=generator).squeeze(-1)
    return chosen
