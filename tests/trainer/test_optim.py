"""The one AdamW builder both trainers use: the Hugging Face Trainer's weight-decay rule (no decay on biases and
norm weights), and each hyperparameter model's optimizer settings."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from services.trainer.optim import build_optimizer
from shared.schemas.rl import GRPOHyperparameters
from shared.schemas.training import SFTHyperparameters


def tiny_qwen2() -> Qwen2ForCausalLM:
    """The built-in models' architecture at its smallest: biased q/k/v projections, RMSNorms, tied embeddings."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def group_names(model, optimizer) -> list[set[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]


def is_bias_or_norm(name: str) -> bool:
    return name.endswith(".bias") or "norm" in name


@pytest.mark.parametrize("hyperparameters", [
    SFTHyperparameters(weight_decay=0.1), GRPOHyperparameters(weight_decay=0.1)], ids=["sft", "grpo"])
def test_biases_and_norm_weights_are_not_decayed(hyperparameters):
    model = tiny_qwen2()
    optimizer = build_optimizer(model, hyperparameters)
    decayed, spared = group_names(model, optimizer)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    assert spared == {name for name, _ in model.named_parameters() if is_bias_or_norm(name)}
    assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.1.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"} <= spared
    assert decayed == {name for name, _ in model.named_parameters() if not is_bias_or_norm(name)}
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.mlp.down_proj.weight"} <= decayed
    # Every trained tensor once (the tied lm_head is the embedding).
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_norm_layers_are_known_by_their_type_not_their_name():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2, bias=False))
    decayed, spared = group_names(model, build_optimizer(model, SFTHyperparameters(weight_decay=0.1)))
    assert decayed == {"0.weight", "2.weight"}
    assert spared == {"0.bias", "1.weight", "1.bias"}


def test_each_model_brings_its_own_settings():
    model = tiny_qwen2()
    sft = build_optimizer(model, SFTHyperparameters()).param_groups[0]
    grpo = build_optimizer(model, GRPOHyperparameters(adam_beta2=0.99, adam_epsilon=1e-6)).param_groups[0]
    assert (sft["lr"], sft["betas"], sft["eps"], sft["weight_decay"]) == (2e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (grpo["lr"], grpo["betas"], grpo["eps"], grpo["weight_decay"]) == (1e-6, (0.9, 0.99), 1e-6, 0.0)


def test_only_trained_tensors_are_optimized_and_empty_groups_are_left_out():
    """A LoRA adapter's tensors are all matrices: one group, decayed (the saved state lists exactly these)."""
    model = tiny_qwen2()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("q_proj.weight"))
    optimizer = build_optimizer(model, GRPOHyperparameters(weight_decay=0.1))
    assert group_names(model, optimizer) == [{"model.layers.0.self_attn.q_proj.weight",
                                              "model.layers.1.self_attn.q_proj.weight"}]


def test_decay_shrinks_only_the_decayed_tensors():
    """A step with zero gradients: AdamW moves nothing but the decay, lr x weight_decay of each decayed weight."""
    model = tiny_qwen2()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, SFTHyperparameters(learning_rate=0.1, weight_decay=0.5))
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        expected = before[name] if is_bias_or_norm(name) else before[name] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(parameter.detach(), expected, msg=name)
