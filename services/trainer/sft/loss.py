"""The SFT loss as a module (so DDP wraps it): packed forward, vocabulary projection only where loss falls."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from services.trainer.sft.data import IGNORE_INDEX


class PackedCausalLMLoss(torch.nn.Module):
    """Summed next-token cross-entropy over the positions whose target is an assistant token.

    A packed row comes with position ids and no attention mask (transformers makes the mask block-diagonal);
    a bucketed batch with a padding mask. Only hidden states that predict a trained token go through the
    output projection: context turns (system prompt, task, observations) are often most of a conversation,
    and their logits would be computed only to be masked out.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        decoder = self.model.get_decoder()
        hidden = decoder(
            input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state                                       # (B, L, H)
        targets = labels[:, 1:]                                   # (B, L-1): token t+1 is predicted at t
        keep = targets != IGNORE_INDEX                            # (B, L-1) completion mask
        selected = hidden[:, :-1][keep]                           # (N, H), N = trained tokens
        logits = self.model.get_output_embeddings()(selected)     # (N, V)
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum")


def reference_loss_sum(model: torch.nn.Module, input_ids, labels, position_ids=None, attention_mask=None) -> torch.Tensor:
    """The same quantity through the model's full forward (all logits); used to cross-check the module."""
    logits = model(
        input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False
    ).logits  # (B, L, V)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
