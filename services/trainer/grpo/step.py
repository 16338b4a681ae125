"""One GRPO update of a policy on a batch of rollout groups (no HTTP, no files).

    advantages   = group-normalised rewards, one per sample          (losses.group_advantages)
                   + per-token advantages the sample carries (`token_advantages`)
                   - teacher_kl_coef * (logp_student - logp_teacher) per token   (on-policy distillation; logp_student
                     is the trainer's own, from the first pass at the weights being trained, not the engine's)
    ratio        = exp(logp_policy - logp_behaviour) per token        (behaviour = the student's logprobs)
    loss         = -min(ratio * A, clip(ratio, 1-eps, 1+eps_high) * A) [+ beta * k3 KL to the reference]
                   aggregated over generated tokens only (completion_mask), token- or sequence-mean

The batch is split into mini-batches of `mini_batch_size` samples of similar length, each right-padded
to its longest sample; gradients accumulate over all of them with the batch's normaliser, so the optimizer step
equals one full-batch step whatever the mini-batch size. `num_iterations` repeats that step on the
same batch. Target alignment: position t of the (T-1)-long per-token tensors scores token t+1 given
tokens 0..t, so `completion_mask = loss_mask[1:]` and `old_per_token_logps = logprobs[1:]`; positions
before the mini-batch's first generated token are dropped before the vocabulary projection.

Behaviour check: for samples the caller marks `on_policy` (sampled by the very weights being trained),
the first pass's recomputed log-probabilities must equal the behaviour ones up to numerical noise; the
step reports the mean and max |difference| (`logprob_diff/*`) and drops a sample whose mean difference
exceeds `hp.max_logprob_diff` from the loss (`logprob_diff/dropped_samples`): such a sample was scored
on other tokens or by another model than the trainer's, so its importance ratio means nothing. It then
counts as a sample without generated tokens (its gradient is never applied; token_mean's accumulated
gradients are rescaled to the kept tokens' count).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from services.trainer.grpo import losses
from shared.schemas.rl import GRPOHyperparameters


class Sample(Protocol):
    """What a step needs of a rollout (`shared.schemas.rl.RLSample` is one)."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    reward: float


@dataclass
class MiniBatch:
    """A right-padded mini-batch. Per-token tensors cover only target positions `start + 1 .. L - 1`:
    the prompt before the first generated token needs no logits (K = L - 1 - start columns)."""

    input_ids: torch.Tensor            # (B, L) right-padded with pad_id
    attention_mask: torch.Tensor       # (B, L) 1 on real tokens, 0 on padding
    completion_mask: torch.Tensor      # (B, K) 1 on generated target tokens, 0 on prompt/observations/padding
    old_per_token_logps: torch.Tensor  # (B, K) behaviour log-probabilities of the targets
    advantages: torch.Tensor           # (B,)
    start: int = 0                     # first position whose logits are needed (it predicts token start + 1)
    checked: torch.Tensor | None = None  # (B,) bool: samples whose behaviour logprobs are checked (on-policy)
    ref_per_token_logps: torch.Tensor | None = None  # (B, K), filled when beta > 0
    token_advantages: torch.Tensor | None = None   # (B, K) added to each sample's advantage, when samples carry them
    teacher_per_token_logps: torch.Tensor | None = None  # (B, K) the teacher's log-probabilities of the targets
    student_per_token_logps: torch.Tensor | None = None  # (B, K) the policy's, from the step's first pass (no grad)

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, self.start + 1 :]  # (B, K)

    @property
    def logits_to_keep(self) -> int:
        return self.input_ids.shape[1] - self.start  # the model's last K + 1 positions


def pad_mini_batch(
    samples: Sequence[Sample], advantages: torch.Tensor, *, pad_id: int, device, checked: Sequence[bool] | None = None
) -> MiniBatch:
    """Right-pad `samples` to the longest one; padding is masked out of attention and loss."""
    width = max(len(s.token_ids) for s in samples)
    rows = len(samples)
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    loss_mask = torch.zeros((rows, width), dtype=torch.float32)
    logprobs = torch.zeros((rows, width), dtype=torch.float32)
    # Optional per-token inputs: present when any sample has them, zero for the samples that do not.
    optional = {name: torch.zeros((rows, width), dtype=torch.float32) if any(getattr(s, name, None) is not None
                                                                            for s in samples) else None
                for name in ("token_advantages", "teacher_logprobs")}
    for row, sample in enumerate(samples):
        length = len(sample.token_ids)
        input_ids[row, :length] = torch.tensor(sample.token_ids, dtype=torch.long)
        attention_mask[row, :length] = 1
        loss_mask[row, :length] = torch.tensor(sample.loss_mask, dtype=torch.float32)
        logprobs[row, :length] = torch.tensor(sample.logprobs, dtype=torch.float32)
        for name, values in optional.items():
            if values is not None and getattr(sample, name, None) is not None:
                values[row, :length] = torch.tensor(getattr(sample, name), dtype=torch.float32)
    # Long shared prefixes (SCoRe's verified prefix) need no logits: skip them up to the earliest generated token.
    generated = loss_mask.sum(0).nonzero()
    start = max(int(generated[0]) - 1, 0) if len(generated) else width - 2
    return MiniBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        completion_mask=loss_mask[:, start + 1 :].to(device),
        old_per_token_logps=logprobs[:, start + 1 :].to(device),
        advantages=advantages.to(device),
        start=start,
        checked=torch.tensor(list(checked) if checked is not None else [False] * rows, dtype=torch.bool, device=device),
        **{field: None if values is None else values[:, start + 1 :].to(device)
           for field, values in (("token_advantages", optional["token_advantages"]),
                                 ("teacher_per_token_logps", optional["teacher_logprobs"]))},
    )


def per_token_logps(model, batch: MiniBatch, *, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (B, K) of each target token under `model` (unscaled logits, like the engine's
    behaviour logprobs), and optionally the entropy (B, K) of each position's distribution (no grad)."""
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
        logits_to_keep=batch.logits_to_keep,
    ).logits
    logits = logits[:, :-1, :]  # (B, K, V): the last position predicts nothing we have
    logps = losses.selective_log_softmax(logits, batch.targets)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = losses.entropy_from_logits(logits.detach())
    return logps, entropy


def _check_behaviour(batch: MiniBatch, logps: torch.Tensor, bound: float | None, check: dict[str, float]) -> None:
    """Compare recomputed (B, K) and behaviour log-probabilities of the checked samples; zero the completion mask
    of those whose mean |difference| exceeds `bound`, adding to the step's sums in `check`."""
    mask = batch.completion_mask * batch.checked.unsqueeze(-1)                # (B, K)
    diff = (logps.float() - batch.old_per_token_logps).abs() * mask          # (B, K)
    tokens = mask.sum(-1)                                                    # (B,)
    per_sample = diff.sum(-1) / tokens.clamp(min=1.0)                        # (B,)
    check["diff_sum"] += diff.sum().item()
    check["tokens"] += tokens.sum().item()
    check["max"] = max(check["max"], diff.max().item() if diff.numel() else 0.0)
    check["samples"] += float(((tokens > 0) & batch.checked).sum().item())
    if bound is None:
        return
    drop = (per_sample > bound) & (tokens > 0)                               # (B,)
    if bool(drop.any()):
        check["dropped"] += float(drop.sum().item())
        batch.completion_mask = batch.completion_mask * (~drop).unsqueeze(-1).to(batch.completion_mask.dtype)


def _advantages(batch: MiniBatch, coef: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The advantages the surrogate uses: (B,) group advantages, or (B, K) once samples carry per-token terms; and
    the per-token reverse KL to the teacher (B, K) when the samples carry the teacher's log-probabilities.

    The student's side of the KL is the trainer's recomputation at the weights being trained (the first pass, fixed
    for the step's iterations), not the engine's behaviour log-probabilities: it is the policy being moved, and it
    matches a plain forward pass exactly where the engine's incremental decoding differs by ~1e-5."""
    if batch.token_advantages is None and batch.teacher_per_token_logps is None:
        return batch.advantages, None
    per_token = batch.advantages.unsqueeze(-1).expand_as(batch.completion_mask).clone()   # (B, K)
    if batch.token_advantages is not None:
        per_token = per_token + batch.token_advantages
    reverse_kl = None
    if batch.teacher_per_token_logps is not None:
        distill, reverse_kl = losses.reverse_kl_advantages(
            batch.student_per_token_logps, batch.teacher_per_token_logps, batch.completion_mask, coef=coef)
        per_token = per_token + distill
    return per_token, reverse_kl


def _autocast(device: torch.device):
    # bf16 matmuls on GPU with fp32 master weights and fp32 loss math; plain fp32 on CPU (bf16 is slow there).
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grpo_step(
    policy,
    optimizer: torch.optim.Optimizer,
    groups: Sequence[Sequence[Sample]],
    hp: GRPOHyperparameters,
    *,
    pad_id: int,
    ref_model=None,
    on_policy: Sequence[bool] | None = None,
) -> dict[str, float]:
    """Update `policy` in place on `groups` (one list of samples per prompt); returns step metrics.

    `on_policy`: per sample in group order, True when it was sampled by exactly the weights of `policy`
    (its behaviour logprobs are checked); None = all of them."""
    started = time.perf_counter()
    device = next(policy.parameters()).device
    samples = [sample for group in groups for sample in group]
    rewards = torch.tensor([float(s.reward) for s in samples])
    advantages, is_std_zero = losses.group_advantages(
        rewards, [len(group) for group in groups], scale_rewards=hp.scale_rewards
    )
    # Mini-batches of similar lengths pad least; the order is free because every mini-batch shares the
    # batch's normaliser and the optimizer steps once after all of them.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].token_ids))
    size = hp.mini_batch_size
    on_policy = list(on_policy) if on_policy is not None else [True] * len(samples)
    batches = [
        pad_mini_batch([samples[i] for i in chunk], advantages[chunk], pad_id=pad_id, device=device,
                       checked=[on_policy[i] for i in chunk])
        for chunk in (order[start : start + size] for start in range(0, len(order), size))
    ]
    # Normalisers of the whole batch, so accumulated mini-batch gradients equal one full-batch mean.
    num_tokens = float(sum(b.completion_mask.sum().item() for b in batches)) or 1.0
    num_sequences = float(len(samples))
    if hp.beta > 0.0:
        if ref_model is None:
            raise ValueError("beta > 0 needs the reference model")
        with torch.no_grad(), _autocast(device):
            for batch in batches:
                batch.ref_per_token_logps = per_token_logps(ref_model, batch)[0]

    eps_low, eps_high = hp.epsilon_low, hp.effective_epsilon_high
    params = [p for p in policy.parameters() if p.requires_grad]
    totals = {"loss": 0.0, "kl": 0.0, "grad_norm": 0.0, "clip_low": 0.0, "clip_high": 0.0, "clip_region": 0.0}
    first = {"entropy": 0.0, "ppo_kl": 0.0, "ratio_sum": 0.0, "ratio_max": 0.0, "teacher_kl": 0.0,
             "token_advantage_abs": 0.0}
    with_teacher = any(b.teacher_per_token_logps is not None for b in batches)
    check = {"diff_sum": 0.0, "tokens": 0.0, "max": 0.0, "samples": 0.0, "dropped": 0.0}
    policy.train()
    try:
        for iteration in range(hp.num_iterations):
            optimizer.zero_grad(set_to_none=True)
            iteration_loss = 0.0
            for batch in batches:
                with _autocast(device):
                    logps, entropy = per_token_logps(policy, batch, with_entropy=iteration == 0)
                if iteration == 0:
                    _check_behaviour(batch, logps.detach(), hp.max_logprob_diff, check)
                    batch.student_per_token_logps = logps.detach().float()
                mask = batch.completion_mask
                advantages, reverse_kl = _advantages(batch, hp.teacher_kl_coef)
                per_token_loss, ratio = losses.clipped_surrogate(
                    logps, batch.old_per_token_logps, advantages, epsilon_low=eps_low, epsilon_high=eps_high
                )
                if batch.ref_per_token_logps is not None:
                    per_token_kl = losses.k3_kl(logps, batch.ref_per_token_logps)
                    per_token_loss = per_token_loss + hp.beta * per_token_kl
                    totals["kl"] += (per_token_kl.detach() * mask).sum().item()
                if hp.loss_type == "token_mean":
                    loss = losses.token_mean(per_token_loss, mask, num_tokens)
                else:
                    loss = losses.sequence_mean(per_token_loss, mask, num_sequences)
                loss.backward()
                iteration_loss += loss.item()  # mini-batch losses sum to the batch loss (shared normaliser)
                clipped = losses.clip_fractions(
                    ratio.detach(), advantages, mask, epsilon_low=eps_low, epsilon_high=eps_high
                )
                for name in ("low", "high", "region"):
                    totals[f"clip_{name}"] += clipped[name].item()
                if iteration == 0:  # the policy as it was when the batch arrived
                    ratio = ratio.detach()
                    first["entropy"] += (entropy * mask).sum().item()
                    first["ppo_kl"] += ((batch.old_per_token_logps - logps.detach()) * mask).sum().item()
                    first["ratio_sum"] += (ratio * mask).sum().item()
                    first["ratio_max"] = max(first["ratio_max"], (ratio * mask).max().item())
                    if reverse_kl is not None:
                        first["teacher_kl"] += (reverse_kl * mask).sum().item()
                    if advantages.dim() == 2:
                        first["token_advantage_abs"] += (advantages.abs() * mask).sum().item()
            if iteration == 0 and check["dropped"]:
                # A dropped sample counts as one without generated tokens. Its mask was zeroed before its loss, so the
                # gradients hold the kept samples only, but token_mean divided them by the whole batch's token count:
                # rescale to the kept count (exact: the loss is linear in it). sequence_mean still counts it.
                kept_tokens = float(sum(b.completion_mask.sum().item() for b in batches))
                if hp.loss_type == "token_mean" and kept_tokens:
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(num_tokens / kept_tokens)
                    iteration_loss *= num_tokens / kept_tokens
                num_tokens = kept_tokens or 1.0
                if not kept_tokens:
                    break  # every sample dropped: nothing to learn from, and AdamW would still move the weights
            totals["loss"] += iteration_loss
            max_norm = hp.max_grad_norm if hp.max_grad_norm is not None else math.inf
            totals["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        policy.eval()
    elapsed = time.perf_counter() - started

    iterations = hp.num_iterations
    real_tokens = sum(len(s.token_ids) for s in samples)
    padded_tokens = sum(b.input_ids.numel() for b in batches)
    completion_lengths = torch.tensor([float(sum(s.loss_mask)) for s in samples])
    metrics = {
        "reward/mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if len(samples) > 1 else 0.0,
        "frac_reward_zero_std": is_std_zero.float().mean().item(),
        "advantages/abs_mean": advantages.abs().mean().item(),
        "loss": totals["loss"] / iterations,
        "grad_norm": totals["grad_norm"] / iterations,
        "clip_ratio": totals["clip_region"] / (num_tokens * iterations),
        "clip_ratio/low_mean": totals["clip_low"] / (num_tokens * iterations),
        "clip_ratio/high_mean": totals["clip_high"] / (num_tokens * iterations),
        "entropy": first["entropy"] / num_tokens,
        "ppo_kl": first["ppo_kl"] / num_tokens,
        "importance_ratio/mean": first["ratio_sum"] / num_tokens,
        "importance_ratio/max": first["ratio_max"],
        "response_length/mean": completion_lengths.mean().item(),
        "response_length/max": completion_lengths.max().item(),
        "num_samples": float(len(samples)),
        "num_groups": float(len(groups)),
        "num_tokens": float(real_tokens),
        "num_completion_tokens": num_tokens,
        "padding_share": 1.0 - real_tokens / padded_tokens,
        "update_time_s": elapsed,
        "tokens_per_s": real_tokens * iterations / elapsed,
        "learning_rate": hp.learning_rate,
        "logprob_diff/mean": check["diff_sum"] / check["tokens"] if check["tokens"] else 0.0,
        "logprob_diff/max": check["max"],
        "logprob_diff/checked_samples": check["samples"],
        "logprob_diff/dropped_samples": check["dropped"],
    }
    if hp.beta > 0.0:
        metrics["kl"] = totals["kl"] / (num_tokens * iterations)
    if with_teacher:
        # Tinker's name for the sampled reverse KL to the teacher, per generated token, before this update.
        metrics["teacher_kl"] = first["teacher_kl"] / num_tokens
        metrics["teacher_kl_coef"] = hp.teacher_kl_coef
    if any(b.token_advantages is not None or b.teacher_per_token_logps is not None for b in batches):
        metrics["advantages/token_abs_mean"] = first["token_advantage_abs"] / num_tokens
    return metrics
