"""Induction pre-training: teach a tiny model to copy what it has seen, before it ever sees a task.

An agent copies all the time: the numbers of the question into its code, the name a search returned into the
next query, the printed value into the final answer. That takes induction heads (find the earlier occurrence
of the current token, predict what followed it). Small pre-trained LMs have them; a randomly initialised
tiny model fine-tuned on a few hundred trajectories does not grow them (measured: digit accuracy stays at
chance), because the copied tokens are a small share of the loss and the circuit has to form from nothing.

The stage trains on random token sequences in which a segment reappears after a random gap, with the loss on
the repeated segment only — where only copying can predict. Measured on the 2-layer student with one thread:
held-out copy accuracy goes from chance to over 90% in about 400 steps (35 s), and after it SFT on expert
trajectories reaches 98.7% teacher-forced accuracy on held-out digits, against 10-19% from a fresh model.
The sequences are random ids over the whole vocabulary: no text, nothing of any task.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from shared.models.build_context import seeded_threads

logger = logging.getLogger("score.models")

# Bump when the generated sequences change; the built-in recipe records it, so new data rebuilds the models.
DATA_VERSION = 1


def induction_batch(generator: torch.Generator, *, batch_size: int, seq_len: int, segment: int, vocab: list[int],
                    narrow_rows: int = 0, narrow_vocab: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (batch, seq_len) with a segment repeated after a random gap, and the mask of copyable targets.

    The mask marks positions whose next token is predictable only by copying: the repeat's tokens after its
    first (the first token of a repeat cannot be known before the repeat starts).

    The first `narrow_rows` rows draw their tokens from `narrow_vocab` ids of their own. Over the whole
    vocabulary a token seldom recurs within a row, so the token before is enough to find what to copy; in a
    narrow row it recurs with other successors, and copying has to match the tokens before it too, as in names
    built of syllables that other names in context share ("Dratrasri" beside "Tratrasri")."""
    table = torch.tensor(vocab)
    ids = table[torch.randint(0, len(vocab), (batch_size, seq_len), generator=generator)]
    for row in range(narrow_rows):
        subset = table[torch.randperm(len(vocab), generator=generator)[:narrow_vocab]]
        ids[row] = subset[torch.randint(0, narrow_vocab, (seq_len,), generator=generator)]
    targets = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    room = seq_len - 2 * segment
    for row in range(batch_size):
        start = int(torch.randint(0, room // 4 + 1, (1,), generator=generator))
        gap = int(torch.randint(0, room - start + 1, (1,), generator=generator))
        repeat = start + segment + gap
        ids[row, repeat:repeat + segment] = ids[row, start:start + segment]
        targets[row, repeat + 1:repeat + segment] = True
    return ids, targets


def copy_vocabulary(tokenizer) -> list[int]:
    """Every id but the special tokens (they mark turns; random ones would teach the chat structure noise)."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def copy_accuracy(model, *, vocab: list[int], seed: int = 12345, batches: int = 2, batch_size: int = 128,
                  seq_len: int = 64, segment: int = 10, narrow_vocab: int = 0) -> float:
    """Held-out accuracy on the copyable positions (chance is 1/len(vocab)); with `narrow_vocab`, on rows that
    are all narrow."""
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(batches):
            ids, targets = induction_batch(generator, batch_size=batch_size, seq_len=seq_len, segment=segment,
                                           vocab=vocab, narrow_rows=batch_size if narrow_vocab else 0,
                                           narrow_vocab=narrow_vocab)
            predicted = model(input_ids=ids).logits[:, :-1].argmax(-1)
            mask = targets[:, 1:]
            correct += int((predicted[mask] == ids[:, 1:][mask]).sum())
            total += int(mask.sum())
    model.train(was_training)
    return correct / max(1, total)


def pretrain_induction(model, tokenizer, *, steps: int, lr: float, seed: int, batch_size: int = 32,
                       seq_len: int = 64, segment: int = 10, warmup: int = 50, threads: int = 1,
                       log_every_s: float = 5.0, narrow_rows: int = 0, narrow_vocab: int = 0) -> dict:
    """Train on repeated random segments (loss on the repeats only); returns steps, tokens, seconds, accuracy
    (and the accuracy on narrow rows too, when some are trained)."""
    with seeded_threads(seed, threads):
        return _loop(model, copy_vocabulary(tokenizer), steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                     seq_len=seq_len, segment=segment, warmup=warmup, log_every_s=log_every_s,
                     narrow_rows=narrow_rows, narrow_vocab=narrow_vocab)


def _loop(model, vocab, *, steps, lr, seed, batch_size, seq_len, segment, warmup, log_every_s, narrow_rows,
          narrow_vocab) -> dict:
    # No weight decay and a short-memory second moment: the circuit forms in a sudden transition that decay
    # and a slow Adam would both delay.
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    model.train()
    started = last_log = time.perf_counter()
    loss_value = float("nan")
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        ids, targets = induction_batch(generator, batch_size=batch_size, seq_len=seq_len, segment=segment,
                                       vocab=vocab, narrow_rows=narrow_rows, narrow_vocab=narrow_vocab)
        logits = model(input_ids=ids).logits[:, :-1]
        mask = targets[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        now = time.perf_counter()
        if now - last_log >= log_every_s or step == steps - 1:
            last_log = now
            logger.info("induction pre-training step %d/%d loss %.3f", step + 1, steps, loss_value)
    accuracy = copy_accuracy(model, vocab=vocab, seq_len=seq_len, segment=segment)
    narrow = {}
    if narrow_rows:
        narrow["narrow_copy_accuracy"] = round(copy_accuracy(model, vocab=vocab, seq_len=seq_len, segment=segment,
                                                             narrow_vocab=narrow_vocab), 4)
    model.eval()
    if not math.isfinite(loss_value):
        raise RuntimeError("induction pre-training diverged (non-finite loss)")
    return {"steps": steps, "tokens": steps * batch_size * seq_len, "final_loss": round(loss_value, 4),
            "copy_accuracy": round(accuracy, 4), **narrow, "seconds": round(time.perf_counter() - started, 2)}
