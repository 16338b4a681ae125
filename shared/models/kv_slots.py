"""A slot-based KV cache for the in-process engine's decode loop (`kv_cache: slots`, the default).

The legacy layout (`batch.LiveBatch` on a transformers `DynamicCache`) keeps every row left-padded to one
width: each decode step `torch.cat`s one column onto every layer's keys and values and onto the attention
mask (a copy of the whole cache per step), dropping finished rows gathers all remaining rows, and a joining
row left-pads and concatenates everything again. On the tiny CPU models these copies cost more than the
forward pass itself.

Here each layer's keys and values live in preallocated tensors of shape (slots, kv heads, capacity, head
dim), and row r of the batch owns slot r. A row's states are packed from column 0 with no padding, so the
column of a token is its position id: a decode step writes one column per row in place (`SlotLayer.update`)
at the row's own position (one `index_copy_` per tensor, its index computed once per step for all
layers), and the model gets a 4D additive mask (0 on each row's tokens, the dtype's minimum elsewhere),
kept per slot and opened one column per step in place, which transformers passes to attention as it is. A finished row's slot
is refilled by moving the last live row into it (one-row copies); joining rows are prefilled on their own
(the engine's prefill, unchanged) and their unpadded states are gathered into free slots. Slots and columns
grow by doubling when they run out and the slot count halves when the batch has become much smaller.

Numerically a row attends to the same keys and values at the same positions as in the legacy layout, only
without the masked padding columns: logits agree to float rounding (the tests check greedy tokens and
log-probabilities against legacy).
"""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from shared.models.batch import LiveBatch, Row

MIN_SLOTS = 8        # slots allocated at least, and below which the slot count is never shrunk
MIN_CAPACITY = 64    # columns allocated at least


def _pow2(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def slots_unsupported(model) -> str | None:
    """Why the slot cache cannot decode for `model` (its per-step 4D mask would be wrong or ignored), or None."""
    config = model.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return f"attention implementation {implementation!r} takes no 4D additive mask"
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types):
        return "the model has sliding-window or other non-full attention layers"
    return None


class _Step:
    """What every layer needs for one decode step: where each row's new key and value go, and how wide to read."""

    def __init__(self) -> None:
        self.rows = 0
        self.width = 0
        # (rows * heads,) index into a layer's keys viewed as (slots * heads * capacity, head_dim): row r, head h
        # writes at column positions[r]. Computed once per step for all layers: one index_copy_ per tensor.
        self.flat_index: torch.Tensor | None = None


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values, (slots, heads, capacity, head_dim), written one column per row and step."""

    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, step: _Step) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._step = step

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a SlotLayer is allocated up front, never lazily")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        step = self._step
        if key_states.shape[0] != step.rows or key_states.shape[2] != 1:
            # Prefill runs on a DynamicCache; a shape other than one token per live row means misuse.
            raise ValueError(f"slot cache decodes one token per row: got {tuple(key_states.shape)}, {step.rows} rows")
        dim = self.keys.shape[-1]
        self.keys.view(-1, dim).index_copy_(0, step.flat_index, key_states.reshape(-1, dim))
        self.values.view(-1, dim).index_copy_(0, step.flat_index, value_states.reshape(-1, dim))
        return self.keys[: step.rows, :, : step.width], self.values[: step.rows, :, : step.width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._step.width, 0

    def get_seq_length(self) -> int:
        return max(self._step.width - 1, 0)

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class SlotCache(Cache):
    """A transformers `Cache` of `SlotLayer`s sharing one step description."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        self.step_state = _Step()
        super().__init__(layers=[SlotLayer(k, v, self.step_state) for k, v in zip(keys, values)])

    @property
    def slots(self) -> int:
        return self.layers[0].keys.shape[0]

    @property
    def capacity(self) -> int:
        return self.layers[0].keys.shape[2]

    def resize(self, slots: int, capacity: int, rows: int, width: int) -> None:
        """Reallocate to (slots, capacity), keeping the first `rows` slots' first `width` columns."""
        for layer in self.layers:
            for name in ("keys", "values"):
                old = getattr(layer, name)
                new = old.new_zeros((slots, old.shape[1], capacity, old.shape[3]))
                new[:rows, :, :width] = old[:rows, :, :width]
                setattr(layer, name, new)

    def move(self, to: torch.Tensor, source: torch.Tensor, width: int) -> None:
        """Copy slots `source` into slots `to` (first `width` columns), one gather and scatter per tensor."""
        for layer in self.layers:
            for tensor in (layer.keys, layer.values):
                tensor[:, :, :width].index_copy_(0, to, tensor[source, :, :width])


class SlotBatch:
    """The rows being decoded, on a `SlotCache`: the same interface as `LiveBatch` for the engine's loop."""

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self.rows: list[Row] = []
        self.cache: SlotCache | None = None
        self.lengths: list[int] = []        # tokens each row's slot holds (= its next position id)
        self.next_pos: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.temperature: torch.Tensor | None = None
        self.top_p: torch.Tensor | None = None
        # (slots, capacity) additive mask, 0 on each row's tokens, the dtype's minimum elsewhere: kept up to date
        # in place (one scatter per step), so a step builds no mask.
        self.mask: torch.Tensor | None = None
        self._arange: torch.Tensor | None = None  # arange(max(capacity, slots * heads)), sliced for indices
        self._mask_min = 0.0

    # ---- the engine's interface ------------------------------------------------------------------
    def merge(self, other: LiveBatch) -> "SlotBatch":
        """Take the freshly prefilled rows of `other` into free slots, unpadded."""
        n = len(other.rows)
        if n == 0:
            return self
        lengths = [int(x) for x in other.attention_mask.sum(dim=1).tolist()]
        width = max(lengths)
        first = other.cache.layers[0].keys
        if self.cache is None:
            slots = min(max(_pow2(n), MIN_SLOTS), max(_pow2(self.max_slots), n))
            capacity = max(MIN_CAPACITY, _pow2(2 * width))
            zeros = lambda: first.new_zeros((slots, first.shape[1], capacity, first.shape[3]))  # noqa: E731
            self.cache = SlotCache([zeros() for _ in other.cache.layers], [zeros() for _ in other.cache.layers])
            self._mask_min = torch.finfo(first.dtype).min
            self._arange = torch.arange(max(capacity, slots * first.shape[1]), device=first.device)
            self.mask = torch.full((slots, capacity), self._mask_min, dtype=first.dtype, device=first.device)
        else:
            self._ensure(len(self.rows) + n, width + 1)
        start = len(self.rows)
        # Per new row, the cache columns that hold its tokens in order (the prefill's padding left out).
        columns = torch.zeros((n, width), dtype=torch.long)
        for i, mask_row in enumerate(other.attention_mask.cpu()):
            present = mask_row.nonzero().squeeze(-1)
            columns[i, : len(present)] = present
        columns = columns.to(first.device)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            for target, source in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
                index = columns[:, None, :, None].expand(n, source.shape[1], width, source.shape[3])
                target[start : start + n, :, :width] = source.gather(2, index)
        pos = torch.tensor(lengths, device=other.next_pos.device)
        self.mask[start : start + n] = torch.where(
            self._arange[: self.cache.capacity].unsqueeze(0) < pos.unsqueeze(1), 0.0, self._mask_min).to(self.mask.dtype)
        self.rows = self.rows + list(other.rows)
        self.lengths += lengths
        self.next_pos = pos if self.next_pos is None else torch.cat([self.next_pos, pos])
        self.logits = other.logits if self.logits is None else torch.cat([self.logits, other.logits])
        self.temperature = (other.temperature if self.temperature is None
                            else torch.cat([self.temperature, other.temperature]))
        self.top_p = other.top_p if self.top_p is None else torch.cat([self.top_p, other.top_p])
        return self

    def select(self, keep: list[int]) -> list[int]:
        """Drop finished rows: each slot freed below the new row count takes one of the live rows above it.
        Returns the old index of each row in the new order (for the caller's per-row tensors)."""
        count = len(keep)
        kept = set(keep)
        holes = [i for i in range(count) if i not in kept]
        movers = [i for i in keep if i >= count]
        order = list(range(count))
        for hole, mover in zip(holes, movers):
            order[hole] = mover
        if holes:
            device = self.next_pos.device
            width = max(self.lengths[m] for m in movers)
            to, source = torch.tensor(holes, device=device), torch.tensor(movers, device=device)
            self.cache.move(to, source, width)
            self.mask.index_copy_(0, to, self.mask[source])
        self.rows = [self.rows[i] for i in order]
        self.lengths = [self.lengths[i] for i in order]
        index = torch.tensor(order, dtype=torch.long, device=self.next_pos.device)
        self.next_pos, self.logits = self.next_pos[index], self.logits[index]
        self.temperature, self.top_p = self.temperature[index], self.top_p[index]
        if count and count <= self.cache.slots // 4 and self.cache.slots > MIN_SLOTS:
            self._resize(max(MIN_SLOTS, _pow2(2 * count)), self.cache.capacity)
        return order

    def step(self, model, tokens: torch.Tensor) -> None:
        """Feed each row its sampled token at its own position; leaves the logits for the following one."""
        rows = len(self.rows)
        width = max(self.lengths) + 1
        self._ensure(rows, width)
        step = self.cache.step_state
        step.rows, step.width = rows, width
        heads, capacity = self.cache.layers[0].keys.shape[1], self.cache.capacity
        row_heads = self._arange[: rows * heads].view(rows, heads)  # r * heads + h
        step.flat_index = (row_heads * capacity + self.next_pos.unsqueeze(1)).view(-1)
        live_mask = self.mask[:rows]
        live_mask.scatter_(1, self.next_pos.unsqueeze(1), 0.0)  # each row now sees the token it is fed
        out = model(
            input_ids=tokens.unsqueeze(-1), attention_mask=live_mask[:, None, None, :width],
            position_ids=self.next_pos.unsqueeze(-1), past_key_values=self.cache, use_cache=True,
        )
        self.logits = out.logits[:, -1, :].float()
        self.next_pos = self.next_pos + 1
        self.lengths = [n + 1 for n in self.lengths]

    def row_states(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Row i's KV states per layer, (heads, tokens seen, head_dim) each: copies, as its slot gets reused."""
        n = self.lengths[i]
        keys = [layer.keys[i, :, :n].clone() for layer in self.cache.layers]
        values = [layer.values[i, :, :n].clone() for layer in self.cache.layers]
        return keys, values

    # ---- growth ----------------------------------------------------------------------------------
    def _ensure(self, rows: int, width: int) -> None:
        """At least `rows` slots and `width` columns: double what runs out (one copy of the live states)."""
        slots, capacity = self.cache.slots, self.cache.capacity
        if rows <= slots and width <= capacity:
            return
        while slots < rows:
            slots *= 2
        while capacity < width:
            capacity *= 2
        self._resize(slots, capacity)

    def _resize(self, slots: int, capacity: int) -> None:
        live, width = len(self.rows), max(self.lengths, default=0)
        self.cache.resize(slots, capacity, live, width)
        mask = self.mask.new_full((slots, capacity), self._mask_min)
        mask[:live, :width] = self.mask[:live, :width]
        self.mask = mask
        needed = max(capacity, slots * self.cache.layers[0].keys.shape[1])
        if needed > self._arange.shape[0]:
            self._arange = torch.arange(needed, device=self._arange.device)
