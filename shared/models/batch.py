"""The state of one batched generation: each request, its row while it decodes, and the live batch of rows
that share one KV cache (left-padded to one length). The engine (`transformers_engine.py`) fills and steps it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from shared.models.prefix_cache import CachedPrefix
from shared.schemas.sampling import SamplingParams


@dataclass
class Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    max_new: int = 0
    announced: bool = False  # the service announced it (arrivals.py): the worker knew it was coming


@dataclass
class Row:
    """Generation state of one request inside a batch."""

    request: Request
    stream: int | None  # the key of its seeded noise stream (`sampling.seed_stream`), None when unseeded
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    stop_cut: int | None = None  # text length to keep when a stop string matched
    source: CachedPrefix | None = None  # the prefix cache entry its prefill reused
    reused: int = 0                     # prompt tokens taken from that entry instead of prefilled


@dataclass
class LiveBatch:
    """The rows being decoded together and their shared KV cache (all rows padded to one length)."""

    rows: list[Row]
    cache: DynamicCache
    attention_mask: torch.Tensor  # (B, L) 0 on left padding
    next_pos: torch.Tensor        # (B,) position id of each row's next token
    logits: torch.Tensor          # (B, V) float32, for the token to sample next
    temperature: torch.Tensor     # (B,)
    top_p: torch.Tensor           # (B,)

    def select(self, keep: list[int]) -> list[int]:
        """Drop finished rows from the batch and its cache; returns the old index of each row in the new order
        (`keep` itself here; the slot cache reorders)."""
        index = torch.tensor(keep, dtype=torch.long, device=self.attention_mask.device)
        for layer in self.cache.layers:
            layer.batch_select_indices(index)
        self.rows = [self.rows[i] for i in keep]
        self.attention_mask, self.next_pos = self.attention_mask[index], self.next_pos[index]
        self.logits, self.temperature, self.top_p = self.logits[index], self.temperature[index], self.top_p[index]
        return keep

    def step(self, model, tokens: torch.Tensor) -> None:
        """Feed each row its sampled token; leaves the logits for the following one."""
        ones = self.attention_mask.new_ones((len(self.rows), 1))
        self.attention_mask = torch.cat([self.attention_mask, ones], dim=-1)
        out = model(
            input_ids=tokens.unsqueeze(-1), attention_mask=self.attention_mask,
            position_ids=self.next_pos.unsqueeze(-1), past_key_values=self.cache, use_cache=True,
        )
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = self.next_pos + 1

    def row_states(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Row i's KV states per layer without its padding: (heads, tokens seen, head_dim) each."""
        columns = self.attention_mask[i].nonzero().squeeze(-1)
        keys = [layer.keys[i].index_select(1, columns) for layer in self.cache.layers]
        values = [layer.values[i].index_select(1, columns) for layer in self.cache.layers]
        return keys, values

    def merge(self, other: "LiveBatch") -> "LiveBatch":
        """Join two batches: left-pad the shorter cache (masked out) and stack the rows."""
        width = max(self.attention_mask.shape[1], other.attention_mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, width, dim=2), left_pad(theirs.keys, width, dim=2)])
            mine.values = torch.cat([left_pad(mine.values, width, dim=2), left_pad(theirs.values, width, dim=2)])
        self.attention_mask = torch.cat(
            [left_pad(self.attention_mask, width, dim=1), left_pad(other.attention_mask, width, dim=1)]
        )
        self.rows = self.rows + other.rows
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.logits = torch.cat([self.logits, other.logits])
        self.temperature = torch.cat([self.temperature, other.temperature])
        self.top_p = torch.cat([self.top_p, other.top_p])
        return self


def left_pad(tensor: torch.Tensor, width: int, *, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def cached_states(rows: list[Row]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (keys, values) of shape (B, heads, C, head_dim): each row's reused states right-aligned."""
    width = max(row.reused for row in rows)
    template = next(row.source for row in rows if row.reused)
    states = []
    for layer, (k, v) in enumerate(zip(template.keys, template.values)):
        keys = k.new_zeros((len(rows), k.shape[0], width, k.shape[2]))
        values = v.new_zeros((len(rows), v.shape[0], width, v.shape[2]))
        for i, row in enumerate(rows):
            if row.reused:
                keys[i, :, width - row.reused:] = row.source.keys[layer][:, : row.reused]
                values[i, :, width - row.reused:] = row.source.values[layer][:, : row.reused]
        states.append((keys, values))
    return states
