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
    rows = sampled_rows.tolist()
    unseeded = [i for i, row in enumerate(rows) if generators[row] is None]
    if unseeded:
        picks = torch.multinomial(probs[unseeded], 1).squeeze(-1)
        chosen[sampled_rows[unseeded]] = picks
    seeded = [i for i, row in enumerate(rows) if generators[row] is not None]
    if seeded:
        # Seeded rows draw from their own generator, so a seed reproduces whatever the batch around it. Each row
        # draws what torch.multinomial would (one Exp(1) noise per token, the token maximising p / noise: the
        # same tokens as a multinomial call per row), and the argmax runs once for all rows. An inverse-CDF draw
        # with one uniform per row was 3x faster but flipped tokens on float noise between equal computations
        # (the prefix cache on and off), which this draw does not.
        noise = torch.empty_like(probs[seeded])
        for j, i in enumerate(seeded):
            noise[j].exponential_(1.0, generator=generators[rows[i]])
        chosen[sampled_rows[seeded]] = (probs[seeded] / noise).argmax(dim=-1)
    return chosen
