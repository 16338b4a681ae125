"""KV states of finished generations, kept so a later prompt that starts with the same tokens skips them.

An agent episode's next prompt is its previous prompt, the tokens the model generated and the new
observation turn. Kept here after each turn, the KV states of `prompt + generated[:-1]` (what the model
has seen; the last sampled token was never fed) let the next turn prefill only the observation and
prompt tokens, as vLLM's and SGLang's prefix caching do. KV states at position i depend only on
tokens 0..i, so any prefix of an entry is reusable, also by another episode with the same start.

Lookup is by block hash, as in vLLM: each entry registers the chained hash of every full block of
`BLOCK` tokens; a prompt walks its own block hashes to the deepest block some entry shares, then the
candidates there are compared token by token (a hash collision can never reuse wrong states). Entries
are evicted least recently used first under a byte bound. The cache belongs to one set of weights:
the engine clears it on every weight load.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import torch

BLOCK = 16  # tokens per hashed block: short enough that little reuse is lost at the end of a match


@dataclass
class CachedPrefix:
    """The KV states of `tokens`, one (heads, len(tokens), head_dim) tensor per layer for keys and values."""

    id: int
    tokens: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    nbytes: int
    block_hashes: list[int]


def block_hashes(tokens: list[int]) -> list[int]:
    """Chained hash of each full block: hash k covers tokens[: (k + 1) * BLOCK]."""
    hashes, previous = [], 0
    for start in range(0, len(tokens) - BLOCK + 1, BLOCK):
        previous = hash((previous, tuple(tokens[start : start + BLOCK])))
        hashes.append(previous)
    return hashes


def _common_length(a: list[int], b: list[int], start: int, limit: int) -> int:
    """Length of the common prefix of a and b, given they agree on the first `start` tokens, at most `limit`."""
    n = start
    while n < limit and a[n] == b[n]:
        n += 1
    return n


MAX_CANDIDATES = 32  # entries compared token by token per lookup

class PrefixCache:
    """Byte-bounded LRU store of KV prefixes, looked up by the longest shared token prefix."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()  # least recently used first
        self._by_block: dict[int, dict[int, None]] = {}                 # block hash -> entry ids (ordered set)
        self._ids = itertools.count()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry sharing the longest prefix with `prompt` and that length, never the whole prompt: the
        last prompt token must run through the model to give the logits of the first new token."""
        limit = len(prompt) - 1
        hashes = block_hashes(prompt[:limit])
        depth = 0  # full blocks shared with some entry
        while depth < len(hashes) and hashes[depth] in self._by_block:
            depth += 1
        if depth == 0:
            return None, 0
        best, best_length = None, 0
        # The newest entries only: every entry shares the system prompt's blocks, so a new task's lookup would
        # otherwise scan the whole cache (thousands of entries late in a run, slower with every episode).
        for entry_id in itertools.islice(reversed(self._by_block[hashes[depth - 1]]), MAX_CANDIDATES):
            entry = self._entries[entry_id]
            shared = depth * BLOCK
            if entry.tokens[:shared] != prompt[:shared]:  # a hash collision, not a shared prefix
                continue
            length = _common_length(entry.tokens, prompt, shared, min(len(entry.tokens), limit))
            if length > best_length:
                best, best_length = entry, length
        if best is not None:
            self._entries.move_to_end(best.id)
        return best, best_length

    def insert(self, tokens: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep the KV states of `tokens`; evicts the least recently used entries beyond the byte bound."""
        nbytes = sum(t.numel() * t.element_size() for t in itertools.chain(keys, values))
        if len(tokens) < BLOCK or nbytes > self.max_bytes:
            return
        entry = CachedPrefix(next(self._ids), list(tokens), keys, values, nbytes, block_hashes(tokens))
        self._entries[entry.id] = entry
        for h in entry.block_hashes:
            self._by_block.setdefault(h, {})[entry.id] = None
        self.bytes += nbytes
        while self.bytes > self.max_bytes:
            self.remove(next(iter(self._entries)))
            self.evictions += 1

    def remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is None:  # already superseded or evicted
            return
        for h in entry.block_hashes:
            ids = self._by_block.get(h)
            if ids is not None:
                ids.pop(entry_id, None)
                if not ids:
                    del self._by_block[h]
        self.bytes -= entry.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._by_block.clear()
        self.bytes = 0
