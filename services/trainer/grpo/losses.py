"""GRPO loss math as small pure functions on tensors (no model, no optimizer, no I/O).

Shapes: N = samples in the batch, B = samples in a mini-batch, T = positions (next-token targets) of
the padded mini-batch. Every per-token tensor is (B, T) and is read together with `completion_mask`
(B, T), which is 1 exactly on the tokens the policy generated (`loss_mask` of a rollout) and 0 on the
prompt, on tool observations and on right padding.
"""

from __future__ import annotations

from typing import Literal

import torch

from shared.models.token_logprobs import selective_log_softmax  # noqa: F401  (one definition: the teacher scores with it)

ScaleRewards = Literal["group", "batch", "none"]
ADVANTAGE_EPS = 1e-4  # TRL's constant: keeps (r - mean) / std finite when a group's rewards are equal


def group_advantages(
    rewards: torch.Tensor, group_sizes: list[int], *, scale_rewards: ScaleRewards = "group", eps: float = ADVANTAGE_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages `(r - mean_group) / (std + eps)` and which samples had zero-std groups.

    rewards: (N,) in group order; group_sizes: samples per group, summing to N. The std is the unbiased
    one (as TRL's `nanstd`); "group" divides by each group's std, "batch" by the std of the whole batch,
    "none" only centres (Dr. GRPO). A group of one sample, or one whose rewards are all equal, has no
    relative signal: its advantages are exactly 0 in every mode.
    Returns (advantages (N,), is_std_zero (N,) bool).
    """
    if sum(group_sizes) != rewards.numel():
        raise ValueError(f"group sizes sum to {sum(group_sizes)} but there are {rewards.numel()} rewards")
    rewards = rewards.float()
    means, stds = [], []
    for group in torch.split(rewards, group_sizes):
        size = group.numel()
        means.append(group.mean().expand(size))
        stds.append((group.std() if size > 1 else group.new_zeros(())).expand(size))
    mean_grouped = torch.cat(means)   # (N,)
    std_grouped = torch.cat(stds)     # (N,)
    is_std_zero = torch.isclose(std_grouped, torch.zeros_like(std_grouped))
    advantages = rewards - mean_grouped
    if scale_rewards == "group":
        advantages = advantages / (std_grouped + eps)
    elif scale_rewards == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        advantages = advantages / (batch_std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', not {scale_rewards!r}")
    # Equal rewards give an exact 0 numerator already; a single-sample group is forced to 0 explicitly.
    advantages = torch.where(is_std_zero, torch.zeros_like(advantages), advantages)
    return advantages, is_std_zero


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def clipped_surrogate(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss to minimise.

    per_token_logps: (B, T) under the policy being trained (carries the gradient);
    old_per_token_logps: (B, T) under the behaviour policy that sampled the tokens;
    advantages: (B,) one per sample, broadcast over its tokens, or (B, T) one per token (on-policy distillation).
    Returns (per_token_loss (B, T), ratio (B, T)); the loss is -min(r A, clip(r, 1-eps_low, 1+eps_high) A).
    """
    ratio = torch.exp(per_token_logps - old_per_token_logps)                 # (B, T)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)      # (B, T)
    advantages = _per_token(advantages)                                      # (B, 1) or (B, T)
    per_token_loss = -torch.min(ratio * advantages, clipped * advantages)    # (B, T)
    return per_token_loss, ratio


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantages as (B, 1), broadcast over tokens; (B, T) per-token ones unchanged."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def reverse_kl_advantages(
    student_logps: torch.Tensor, teacher_logps: torch.Tensor, completion_mask: torch.Tensor, *, coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """On-policy distillation's per-token advantage, -coef * (log p_student - log p_teacher), and the reverse KL.

    student_logps: (B, T) log-probabilities of the sampled tokens under the student (no gradient);
    teacher_logps: (B, T) the teacher's for the same tokens; completion_mask: (B, T), 1 on generated tokens.
    The per-token difference is the single-sample estimate of KL(student || teacher) at that position (Tinker's
    on-policy distillation, GKD with lambda = 1 and a sampled reverse KL). Both returns are 0 off the mask.
    Returns (advantages (B, T), reverse_kl (B, T)).
    """
    reverse_kl = (student_logps - teacher_logps) * completion_mask
    return -coef * reverse_kl, reverse_kl


def k3_kl(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per token: exp(d) - d - 1 with d = ref - policy.

    Non-negative, unbiased on tokens sampled from the policy; (B, T) -> (B, T).
    """
    delta = ref_per_token_logps - per_token_logps
    return torch.exp(delta) - delta - 1.0


def token_mean(
    per_token_value: torch.Tensor, completion_mask: torch.Tensor, num_tokens: float | None = None
) -> torch.Tensor:
    """Sum over completion tokens divided by `num_tokens` (default: the tokens in this mini-batch).

    Passing the token count of the whole batch makes gradients accumulated over mini-batches equal to
    one token-level mean over the batch (DAPO / TRL `loss_type="dapo"`, verl `token-mean`): every
    generated token weighs the same, so long completions are not down-weighted.
    """
    if num_tokens is None:
        num_tokens = completion_mask.sum().clamp(min=1.0)
    return (per_token_value * completion_mask).sum() / num_tokens


def sequence_mean(
    per_token_value: torch.Tensor, completion_mask: torch.Tensor, num_sequences: float | None = None
) -> torch.Tensor:
    """Mean over each sample's completion tokens, then summed over samples / `num_sequences`.

    The original GRPO aggregation (TRL `loss_type="grpo"`, verl `seq-mean-token-mean`): every sample
    weighs the same whatever its length. `num_sequences` defaults to the samples in this mini-batch.
    """
    per_sequence = (per_token_value * completion_mask).sum(-1) / completion_mask.sum(-1).clamp(min=1.0)  # (B,)
    if num_sequences is None:
        num_sequences = per_sequence.numel()
    return per_sequence.sum() / num_sequences


def clip_fractions(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
) -> dict[str, torch.Tensor]:
    """Share of completion tokens whose objective was clipped (TRL's `clip_ratio/*` metrics), as sums.

    A token is clipped low when its ratio fell below 1-eps with a negative advantage, high when it rose
    above 1+eps with a positive one: exactly the tokens that get no gradient. Returns token counts
    (`low`, `high`, `region`) so mini-batches can be summed before dividing by the batch's tokens.
    """
    advantages = _per_token(advantages)
    low = ((ratio < 1.0 - epsilon_low) & (advantages < 0)).float() * completion_mask
    high = ((ratio > 1.0 + epsilon_high) & (advantages > 0)).float() * completion_mask
    return {"low": low.sum(), "high": high.sum(), "region": (low + high).sum()}
