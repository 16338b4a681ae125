"""Pure sampling helpers for batched generation with per-row parameters.

Seeded rows draw from a counter-based stream: the noise a row gets for token v at the n-th token of its
request is a hash of (its seed, n, v). So a seed reproduces the same tokens whatever the batch around the row,
however the rows are ordered, and on any machine (integer arithmetic only, until the noise becomes a float),
and the noise of every seeded row of a step is computed in one vectorised pass instead of one generator call
per row (64 rows x a 2,048-token vocabulary: 2.0 ms instead of 5.4 on one thread of a 2-core box).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from shared.schemas.sampling import MAX_SEED

# Temperatures below this sample greedily: dividing float32 logits by a near-zero temperature (any value the
# schema allows, down to 1e-38) overflows to inf, and softmax turns that into NaN probabilities.
MIN_TEMPERATURE = 1e-6

_M32 = 0xFFFFFFFF
# A 32-bit integer hash (xor-shift, multiply, xor-shift, multiply, xor-shift; constants from Chris Wellons'
# hash-prospector, a low-bias 32-bit mixer). Both multipliers are below 2**31, so they are int32 scalars.
_C1, _C2 = 0x21F0AAAD, 0x735A2D97
# Odd constants xor-ed into each input, so that no input (seed 0, token 0, the first position) hashes to 0.
_SEED_SALT, _POSITION_SALT, _TOKEN_SALT = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35


def mix32(x: int) -> int:
    """The 32-bit hash on a Python int in [0, 2**32)."""
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 15)


def _mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """`mix32` on an int32 tensor holding the bit patterns of uint32 values. Multiplication wraps modulo 2**32
    in torch's integer kernels, and the shifts are made logical by masking (int32 shifts are arithmetic)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _C1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _C2
    return x ^ ((x >> 15) & 0x1FFFF)


def _as_int32(value: int) -> int:
    """A uint32 bit pattern as the int32 value with the same bits."""
    return value - (1 << 32) if value >= 1 << 31 else value


def seed_stream(seed: int | None) -> int | None:
    """A request's seed (up to 64 bits) folded into the 32-bit key of its noise stream; None stays unseeded."""
    if seed is None:
        return None
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} is outside 0..{MAX_SEED}")
    return mix32(mix32((seed & _M32) ^ _SEED_SALT) ^ ((seed >> 32) & _M32))


def draw_key(stream: int, position: int) -> int:
    """The key of one draw: the stream's `position`-th token (0 for the first token a request generates)."""
    return mix32(stream ^ mix32((position & _M32) ^ _POSITION_SALT))


@lru_cache(maxsize=8)
def _token_salts(vocab: int, device: str) -> torch.Tensor:
    salts = [_as_int32(mix32(v ^ _TOKEN_SALT)) for v in range(vocab)]
    return torch.tensor(salts, dtype=torch.int32, device=device)


def stream_noise(keys: Sequence[int], vocab: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Exp(1) noise, (len(keys), vocab) float32: row i, column v is a function of (keys[i], v) only."""
    key_tensor = torch.tensor([_as_int32(k) for k in keys], dtype=torch.int32, device=device)
    bits = _mix32_tensor(key_tensor.unsqueeze(1) ^ _token_salts(vocab, str(device)))
    # The top 24 bits as a uniform in (0, 1): exact in float32, never 0 or 1, so the noise is finite and > 0.
    uniform = (((bits >> 8) & 0xFFFFFF).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(uniform)


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
    streams: Sequence[int | None],
    positions: Sequence[int],
) -> torch.Tensor:
    """One token per row. logits (B, V) float32; temperature (B,), 0 (below MIN_TEMPERATURE) = greedy;
    streams[i]: row i's `seed_stream` (None: unseeded, torch's global generator); positions[i]: how many
    tokens row i has generated so far. Returns (B,) long."""
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
    unseeded = [i for i, row in enumerate(rows) if streams[row] is None]
    if unseeded:
        picks = torch.multinomial(probs[unseeded], 1).squeeze(-1)
        chosen[sampled_rows[unseeded]] = picks
    seeded = [i for i, row in enumerate(rows) if streams[row] is not None]
    if seeded:
        # The exponential race: with Exp(1) noise E_v per token, argmax p_v / E_v is a draw from p (the draw
        # torch.multinomial makes, with other noise). It is robust to float noise in p: a token changes only
        # where two ratios tie to rounding, where an inverse-CDF draw moves whenever the sum of the
        # probabilities before it does (that flipped episodes between equal computations, prefix cache on/off).
        keys = [draw_key(streams[rows[i]], positions[rows[i]]) for i in seeded]
        noise = stream_noise(keys, probs.shape[-1], probs.device)
        chosen[sampled_rows[seeded]] = (probs[seeded] / noise).argmax(dim=-1)
    return chosen
