"""Log-probabilities of given tokens under a model: what a teacher scores on-policy distillation with.

`sequence_logprobs(model, sequences, starts)` runs the sequences through `model` in length-sorted, right-padded
batches (bounded by the size of their logits) and returns, for every sequence, the log-probability of each token
given the tokens before it, from its `start` on (0.0 before: the prompt needs no logits). Log-probabilities are of
the unscaled logits, as the engine's behaviour log-probabilities and the trainer's recomputation are, so the three
compare token by token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Logit elements (rows x positions x vocabulary) one forward may materialise: 2^26 fp32 values are 256 MiB.
MAX_LOGIT_ELEMENTS = 2**26


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., index] without materialising the (B, T, V) log-prob tensor twice.

    logits: (B, T, V); index: (B, T) token ids -> (B, T) log-probabilities, in float32.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def _batches(order: list[int], sequences: Sequence[Sequence[int]], starts: Sequence[int], vocab: int,
             max_elements: int) -> list[list[int]]:
    """Consecutive runs of `order` (shortest first) whose padded logits fit `max_elements`; one sequence at least."""
    batches: list[list[int]] = []
    current: list[int] = []
    width = first = 0
    for index in order:
        grown_width = max(width, len(sequences[index]))
        grown_first = min(first, starts[index]) if current else starts[index]
        if current and (len(current) + 1) * (grown_width - grown_first) * vocab > max_elements:
            batches.append(current)
            current, grown_width, grown_first = [], len(sequences[index]), starts[index]
        current.append(index)
        width, first = grown_width, grown_first
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def sequence_logprobs(
    model, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, pad_id: int,
    max_logit_elements: int = MAX_LOGIT_ELEMENTS,
) -> list[list[float]]:
    """Per sequence, log p(token t | tokens < t) for t >= starts[i] (1 <= start < length), 0.0 for t < starts[i].

    sequences: token ids; starts: the first position to score in each (its first generated token).
    """
    if len(sequences) != len(starts):
        raise ValueError(f"{len(sequences)} sequences but {len(starts)} starts")
    for i, (tokens, start) in enumerate(zip(sequences, starts)):
        if not 1 <= start < len(tokens):
            raise ValueError(f"sequence {i}: start {start} is outside 1..{len(tokens) - 1}")
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    results: list[list[float]] = [[0.0] * len(tokens) for tokens in sequences]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for batch in _batches(order, sequences, starts, vocab, max_logit_elements):
        width = max(len(sequences[i]) for i in batch)
        first = min(starts[i] for i in batch)        # earliest scored position: logits from first - 1 on
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            attention_mask[row, : len(sequences[i])] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        # The last `width - first + 1` positions' logits; the very last predicts nothing we have.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=width - first + 1).logits[:, :-1, :]       # (B, width - first, V)
        logps = selective_log_softmax(logits, input_ids[:, first:]).cpu()        # (B, width - first)
        for row, i in enumerate(batch):
            start, length = starts[i], len(sequences[i])
            results[i][start:length] = logps[row, start - first: length - first].tolist()
    return results
