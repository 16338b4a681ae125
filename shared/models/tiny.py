"""Qwen2-architecture tiny models: a few named sizes, built deterministically from a seed.

Qwen2 because transformers, vLLM and SGLang all serve it, so a tiny checkpoint exercises the same
code paths as a real one. Parameter counts below assume a ~2k-token vocabulary (embeddings are tied).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

MAX_POSITION_EMBEDDINGS = 4096

# head_dim = hidden_size / num_attention_heads; grouped-query attention (fewer KV heads) as in Qwen2.
TINY_SIZES: dict[str, dict] = {
    # Two layers of two 32-dim heads: the shallowest shape in which induction (copying) forms quickly; deeper
    # or narrower-headed nano shapes did not form it in minutes of pre-training (docs/models.md).
    "nano": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2),
    # The nano recipe made wider (three 32-dim heads, a wider MLP), still two layers, so induction pre-training
    # still forms copying in a build-time budget (~650 steps on one thread).
    "nano-wide": dict(hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3),
    # The build-time fine-tuned teacher (`teacher-sft`): `nano-wide` with a third layer. It still forms copying
    # (1,000 induction steps) and, after SFT, solves more arith than two layers (docs/models.md).
    "nano-wide3": dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3),
    "micro": dict(hidden_size=192, intermediate_size=544, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2),
    "mini": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=9, num_attention_heads=6, num_key_value_heads=2),
}

ROLE_SIZES = {"student": "nano", "teacher": "micro", "teacher-sft": "nano-wide3", "student-wide": "nano-wide3"}


def _token_id(tokenizer, token: str | None) -> int | None:
    return None if token is None else tokenizer.convert_tokens_to_ids(token)


def tiny_config(size: str, tokenizer) -> Qwen2Config:
    """The Qwen2Config of a named size, with the vocabulary and special ids of `tokenizer`."""
    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; known sizes: {', '.join(TINY_SIZES)}")
    return Qwen2Config(
        vocab_size=len(tokenizer),  # len() counts added tokens; .vocab_size does not
        tie_word_embeddings=True,  # at this scale the embedding matrix is a large share of the weights
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        eos_token_id=_token_id(tokenizer, tokenizer.eos_token),
        pad_token_id=_token_id(tokenizer, tokenizer.pad_token),
        bos_token_id=_token_id(tokenizer, tokenizer.bos_token),
        dtype="float32",
        **TINY_SIZES[size],
    )


def build_tiny_model(size: str, tokenizer, seed: int = 0) -> Qwen2ForCausalLM:
    """A freshly initialised model; the same size, tokenizer and seed give identical weights."""
    config = tiny_config(size, tokenizer)
    # fork_rng: seed the initialisation without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    # Saved as generation_config.json, so generate() and vLLM stop on <|im_end|> by default.
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id
    )
    return model.eval()
