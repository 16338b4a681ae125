"""Induction pre-training: the data it trains on, the recipe that records it, and that it teaches copying."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from shared.models import builtin, induction
from shared.models.tiny import build_tiny_model


def test_batches_repeat_a_segment_and_mark_only_the_copyable_positions():
    generator = torch.Generator().manual_seed(0)
    vocab = list(range(10, 500))
    ids, targets = induction.induction_batch(generator, batch_size=16, seq_len=64, segment=10, vocab=vocab)
    assert ids.shape == targets.shape == (16, 64)
    assert int(ids.min()) >= 10 and int(ids.max()) < 500
    for row in range(16):
        marked = targets[row].nonzero().flatten().tolist()
        assert len(marked) == 9 and marked == list(range(marked[0], marked[0] + 9))
        repeat = marked[0] - 1
        segment = ids[row, repeat:repeat + 10].tolist()
        earlier = [ids[row, i:i + 10].tolist() for i in range(0, repeat - 9)]
        assert segment in earlier  # the marked tokens continue a segment seen before


def test_narrow_rows_reuse_few_tokens_and_keep_their_repeat():
    vocab = list(range(10, 500))
    plain, _ = induction.induction_batch(torch.Generator().manual_seed(0), batch_size=8, seq_len=64, segment=10,
                                         vocab=vocab)
    ids, targets = induction.induction_batch(torch.Generator().manual_seed(0), batch_size=8, seq_len=64,
                                             segment=10, vocab=vocab, narrow_rows=3, narrow_vocab=12)
    assert [len(set(ids[row].tolist())) <= 12 for row in range(8)] == [True] * 3 + [False] * 5
    assert all(int(targets[row].sum()) == 9 for row in range(8))
    for row in range(3):  # still a repeated segment where the mask says
        repeat = int(targets[row].nonzero()[0]) - 1
        segment = ids[row, repeat:repeat + 10].tolist()
        assert segment in [ids[row, i:i + 10].tolist() for i in range(0, repeat - 9)]
    # `narrow_vocab` alone changes nothing: without narrow rows the draw is the one every recipe so far used.
    again, _ = induction.induction_batch(torch.Generator().manual_seed(0), batch_size=8, seq_len=64, segment=10,
                                         vocab=vocab, narrow_rows=0, narrow_vocab=12)
    assert torch.equal(plain, again)


def test_special_tokens_are_never_sampled(student_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(student_model_dir, local_files_only=True)
    vocab = induction.copy_vocabulary(tokenizer)
    assert not set(vocab) & set(tokenizer.all_special_ids) and len(vocab) > 1900


def test_the_recipe_records_the_stage_and_rehashes_when_it_changes(monkeypatch):
    base = builtin._model_recipe("student", "tok")
    assert base["induction"]["steps"] > 0 and "induction" not in builtin._model_recipe("teacher", "tok")
    monkeypatch.setitem(builtin.INDUCTION, "student", {**builtin.INDUCTION["student"], "lr": 1e-3})
    assert builtin._digest(builtin._model_recipe("student", "tok")) != builtin._digest(base)
    monkeypatch.setitem(builtin.INDUCTION, "student", {**builtin.INDUCTION["student"], "lr": base["induction"]["lr"]})
    assert builtin._digest(builtin._model_recipe("student", "tok")) == builtin._digest(base)
    monkeypatch.setattr(induction, "DATA_VERSION", induction.DATA_VERSION + 1)
    assert builtin._digest(builtin._model_recipe("student", "tok")) != builtin._digest(base)


def test_the_built_student_copies(student_model_dir):
    """The session's built-in student went through the stage: held-out copy accuracy far above chance."""
    tokenizer = AutoTokenizer.from_pretrained(student_model_dir, local_files_only=True)
    manifest = builtin._read_manifest(student_model_dir)
    assert manifest["induction"]["copy_accuracy"] > 0.8
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student_model_dir, local_files_only=True)
    vocab = induction.copy_vocabulary(tokenizer)
    assert induction.copy_accuracy(model, vocab=vocab, seed=7, batches=1, batch_size=64) > 0.8
    fresh = build_tiny_model("nano", tokenizer, seed=3)
    assert induction.copy_accuracy(fresh, vocab=vocab, seed=7, batches=1, batch_size=64) < 0.05
