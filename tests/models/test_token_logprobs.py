"""Teacher-forced scoring: the same log-probabilities however the sequences are cut into batches."""

import random

import pytest
import torch

from shared.models.loading import load_causal_lm
from shared.models.token_logprobs import sequence_logprobs
from tests.plain_logprobs import plain_logprobs


def test_small_logit_budgets_split_batches_without_changing_the_scores(student_model_dir):
    model, tokenizer = load_causal_lm(student_model_dir, device="cpu", dtype=torch.float32)
    rng = random.Random(3)
    sequences = [[rng.randrange(3, 2000) for _ in range(rng.randint(4, 60))] for _ in range(12)]
    starts = [rng.randint(1, len(s) - 1) for s in sequences]
    whole = sequence_logprobs(model, sequences, starts, pad_id=0)
    # Room for about one short sequence per forward: many batches, each at least one sequence.
    split = sequence_logprobs(model, sequences, starts, pad_id=0, max_logit_elements=20 * len(tokenizer))
    reference = plain_logprobs(student_model_dir, sequences)
    # Padding to other widths changes the float32 sums slightly (measured up to 1.2e-5 here): a bound of 3e-5.
    for tokens, start, a, b, ref in zip(sequences, starts, whole, split, reference):
        assert a[:start] == [0.0] * start and b[:start] == [0.0] * start
        assert max(abs(x - y) for x, y in zip(a[start:], ref[start - 1:].tolist())) < 3e-5
        assert max(abs(x - y) for x, y in zip(b[start:], ref[start - 1:].tolist())) < 3e-5


def test_a_start_outside_the_sequence_is_refused(student_model_dir):
    model, _ = load_causal_lm(student_model_dir, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="start 0 is outside"):
        sequence_logprobs(model, [[5, 6, 7]], [0], pad_id=0)
    with pytest.raises(ValueError, match="start 3 is outside"):
        sequence_logprobs(model, [[5, 6, 7]], [3], pad_id=0)
