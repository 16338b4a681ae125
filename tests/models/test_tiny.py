import math

import pytest
import torch
from transformers import AutoTokenizer

from shared.models.builtin import builtin_model_dir
from shared.models.tiny import ROLE_SIZES, TINY_SIZES, build_tiny_model, tiny_config

TARGET_PARAMS = {"nano": 0.26e6, "nano-wide": 0.49e6, "nano-wide3": 0.64e6, "micro": 3.7e6, "mini": 15e6}


@pytest.fixture(scope="module")
def tokenizer(score_home):
    # The real built-in tokenizer: parameter counts depend on its ~2k vocabulary.
    return AutoTokenizer.from_pretrained(builtin_model_dir("student", score_home), local_files_only=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size", sorted(TARGET_PARAMS))
def test_param_counts_near_targets(tokenizer, size):
    count = n_params(build_tiny_model(size, tokenizer))
    assert abs(count - TARGET_PARAMS[size]) <= 0.3 * TARGET_PARAMS[size], count


def test_sizes_and_roles_are_consistent():
    assert set(TARGET_PARAMS) <= set(TINY_SIZES)
    assert set(ROLE_SIZES.values()) <= set(TINY_SIZES)
    for shape in TINY_SIZES.values():
        assert shape["hidden_size"] % shape["num_attention_heads"] == 0
        assert shape["num_attention_heads"] % shape["num_key_value_heads"] == 0


def test_config_follows_tokenizer(tokenizer):
    config = tiny_config("nano", tokenizer)
    assert config.model_type == "qwen2"
    assert config.vocab_size == len(tokenizer)
    assert config.tie_word_embeddings is True
    assert config.max_position_embeddings == 4096
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id


def test_unknown_size_lists_known_sizes(tokenizer):
    with pytest.raises(ValueError, match="nano.*micro.*mini"):
        tiny_config("huge", tokenizer)


@pytest.mark.parametrize("size", ["nano", "micro"])
def test_forward_and_backward_give_finite_loss(tokenizer, size):
    model = build_tiny_model(size, tokenizer).train()
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=ids, labels=ids).loss
    # Untrained: close to the uniform-prediction loss ln(V).
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(len(tokenizer))) < 1.0
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_same_seed_same_weights_other_seed_differs(tokenizer):
    a, b, c = (build_tiny_model("nano", tokenizer, seed=s) for s in (7, 7, 8))
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_seeding_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model("nano", tokenizer, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_generate_batched_left_padded(tokenizer):
    model = build_tiny_model("nano", tokenizer)
    prompts = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "Hi"}],
    ]
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert (batch["input_ids"][1, 0] == tokenizer.pad_token_id).item()  # left padding
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2
    assert batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 4
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
