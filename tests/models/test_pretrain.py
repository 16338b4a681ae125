import itertools
import random
import re

import pytest
import torch
from transformers import AutoTokenizer

from shared.agent.prompts import TAGS
from shared.models import builtin, pretrain
from shared.models.pretrain import batches, copy_probe, corpus_documents
from shared.models.tiny import build_tiny_model
from shared.models.tokenizer import SPECIAL_TOKENS
from shared.tasks import arith, kb


def documents(seed: int, n: int = 400) -> list[str]:
    return list(itertools.islice(corpus_documents(seed), n))


def test_corpus_is_deterministic_for_a_seed():
    assert documents(3) == documents(3)
    assert documents(3) != documents(4)


def test_every_generator_is_used_and_repeats_what_it_states():
    docs = documents(0, 2000)
    assert len(set(docs)) > 1900  # distinct numbers and names, not a handful of memorisable texts
    for kind, generate in pretrain.GENERATORS.items():
        for seed in range(5):
            text = generate(random.Random(seed))
            mentions = re.findall(r"\d{2,}", text) + [w for w in re.findall(r"\w+", text) if w in pretrain._FIRST]
            assert any(mentions.count(m) > 1 for m in mentions), (kind, text)


def test_corpus_has_no_agent_format_and_no_task_question_text():
    text = "\n".join(documents(0, 2000)).lower()
    for marker in (*TAGS, *SPECIAL_TOKENS, "final_answer", "observation:"):
        assert marker.lower() not in text, marker
    templates = list(arith._TEMPLATES) + [t for pair in kb._TEMPLATES.values() for t in pair]
    fragments = {part.strip().lower() for t in templates for part in re.split(r"\{\w+\}", t)}
    for fragment in fragments:
        if len(fragment) >= 8:
            assert fragment not in text, fragment


@pytest.fixture(scope="module")
def tokenizer(student_model_dir):
    return AutoTokenizer.from_pretrained(student_model_dir, local_files_only=True)


def test_batches_are_packed_rows_of_the_stream(tokenizer):
    first = next(batches(tokenizer, seed=0, batch_size=2, seq_len=32))
    assert first.shape == (2, 32)
    assert torch.equal(first, next(batches(tokenizer, seed=0, batch_size=2, seq_len=32)))
    assert tokenizer.eos_token_id in next(batches(tokenizer, seed=0, batch_size=4, seq_len=256)).flatten().tolist()


def test_pretraining_lowers_the_loss_and_reports(tokenizer):
    model = build_tiny_model("nano", tokenizer, seed=0)
    stats = pretrain.pretrain(model, tokenizer, steps=30, lr=1e-2, seed=0, batch_size=4, seq_len=64, warmup=5)
    assert stats["steps"] == 30 and stats["tokens"] == 30 * 4 * 64
    assert stats["final_loss"] < 6.0  # from ~7.6, uniform over the 2k vocabulary
    assert not model.training
    assert 0.0 <= copy_probe(model, tokenizer, seed=1, n=4) <= 1.0


def test_recipe_names_pretraining_only_when_enabled_and_hashes_its_settings(monkeypatch):
    plain = builtin._model_recipe("student", "tok")
    assert "pretrain" not in plain  # models built without the stage keep their existing cache
    monkeypatch.setitem(builtin.PRETRAIN, "student", {**builtin.PRETRAIN["student"], "steps": 100})
    on = builtin._model_recipe("student", "tok")
    assert on["pretrain"]["steps"] == 100 and on["pretrain"]["corpus"] == pretrain.corpus_recipe()
    monkeypatch.setitem(builtin.PRETRAIN, "student", {**builtin.PRETRAIN["student"], "steps": 100, "lr": 1e-3})
    other_lr = builtin._model_recipe("student", "tok")
    monkeypatch.setattr(pretrain, "CORPUS_VERSION", pretrain.CORPUS_VERSION + 1)
    other_corpus = builtin._model_recipe("student", "tok")
    hashes = {builtin._digest(r) for r in (plain, on, other_lr, other_corpus)}
    assert len(hashes) == 4


def test_enabled_pretraining_runs_in_the_build_and_is_recorded(tmp_path, monkeypatch, score_home):
    tokenizer_dir = score_home / "models" / "builtin" / "tokenizer"
    monkeypatch.setitem(builtin.PRETRAIN, "student", {**builtin.PRETRAIN["student"], "steps": 3, "batch_size": 2,
                                                      "seq_len": 32})
    monkeypatch.setitem(builtin.INDUCTION, "student", {**builtin.INDUCTION["student"], "steps": 2, "batch_size": 2})
    recipe = builtin._model_recipe("student", "tok")
    target = tmp_path / "student"
    builtin._build_model("student", target, tokenizer_dir, recipe, builtin._digest(recipe))
    info = builtin._read_manifest(target)
    assert info["pretrain"]["steps"] == 3 and info["pretrain"]["tokens"] == 3 * 2 * 32
