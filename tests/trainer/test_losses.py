"""GRPO loss math on tensors small enough to check by hand."""

import math

import pytest
import torch

from services.trainer.grpo import losses


def test_group_advantages_scaled_by_group_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 7.0])
    advantages, zero_std = losses.group_advantages(rewards, [3, 2, 1], scale_rewards="group")
    # group 1: mean 2, unbiased std 1 -> (r - 2) / (1 + 1e-4); group 2: equal rewards; group 3: a single sample
    expected = torch.tensor([-1.0, 0.0, 1.0]) / (1.0 + losses.ADVANTAGE_EPS)
    assert torch.allclose(advantages[:3], expected)
    assert advantages[3:].tolist() == [0.0, 0.0, 0.0]
    assert zero_std.tolist() == [False, False, False, True, True, True]


def test_group_advantages_without_std_scaling_only_centre():
    rewards = torch.tensor([0.0, 4.0, 1.0, 1.0])
    advantages, _ = losses.group_advantages(rewards, [2, 2], scale_rewards="none")
    assert advantages.tolist() == [-2.0, 2.0, 0.0, 0.0]


def test_group_advantages_batch_scaling_uses_the_batch_std():
    rewards = torch.tensor([0.0, 2.0, 4.0, 4.0])
    advantages, _ = losses.group_advantages(rewards, [2, 2], scale_rewards="batch")
    batch_std = rewards.std().item()  # unbiased, over all four
    assert advantages.tolist() == pytest.approx([-1 / (batch_std + 1e-4), 1 / (batch_std + 1e-4), 0.0, 0.0])


def test_group_advantages_reject_sizes_that_do_not_cover_the_rewards():
    with pytest.raises(ValueError, match="sum to 3"):
        losses.group_advantages(torch.zeros(4), [2, 1])


def _surrogate(ratio: float, advantage: float, *, eps_low=0.2, eps_high=0.2):
    logps = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old = torch.zeros(1, 1)
    loss, r = losses.clipped_surrogate(logps, old, torch.tensor([advantage]), epsilon_low=eps_low, epsilon_high=eps_high)
    loss.sum().backward()
    return loss.item(), logps.grad.item(), r.item()


def test_clip_high_side_stops_the_gradient_for_positive_advantages():
    loss, grad, ratio = _surrogate(1.5, 1.0)
    assert ratio == pytest.approx(1.5)
    assert loss == pytest.approx(-1.2)  # -min(1.5 * 1, 1.2 * 1)
    assert grad == 0.0
    loss, grad, _ = _surrogate(1.5, -1.0)  # a negative advantage is not clipped above: push it down
    assert loss == pytest.approx(1.5)
    assert grad == pytest.approx(1.5)   # d(-r A)/dlogp = -A r


def test_clip_low_side_stops_the_gradient_for_negative_advantages():
    loss, grad, _ = _surrogate(0.5, -1.0)
    assert loss == pytest.approx(0.8)   # -min(-0.5, -0.8)
    assert grad == 0.0
    loss, grad, _ = _surrogate(0.5, 1.0)  # a positive advantage is not clipped below: pull it up
    assert loss == pytest.approx(-0.5)
    assert grad == pytest.approx(-0.5)


def test_epsilon_high_widens_only_the_upper_bound():
    loss, grad, _ = _surrogate(1.25, 1.0, eps_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)
    loss, grad, _ = _surrogate(0.75, -1.0, eps_high=0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0


def test_token_mean_ignores_masked_tokens_and_normalises_by_generated_tokens():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    completion_mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert losses.token_mean(per_token, completion_mask).item() == pytest.approx((2 + 3 + 4) / 3)
    # mini-batches normalised by the batch's token count add up to the full-batch mean
    halves = sum(losses.token_mean(per_token[i : i + 1], completion_mask[i : i + 1], 3.0) for i in range(2))
    assert halves.item() == pytest.approx(3.0)


def test_sequence_mean_weighs_every_sample_equally():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    completion_mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert losses.sequence_mean(per_token, completion_mask).item() == pytest.approx(((2 + 3) / 2 + 4) / 2)
    empty = torch.zeros(1, 3)  # a sample with nothing generated contributes 0, not NaN
    assert losses.sequence_mean(per_token[:1], empty).item() == 0.0


def test_masked_tokens_get_no_gradient_and_their_behaviour_logprobs_do_not_matter():
    completion_mask = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 1.0]])  # prompt, prompt, gen, gen, observation, gen
    logps = torch.full((1, 6), -2.0, requires_grad=True)
    old = torch.full((1, 6), -2.0)
    advantages = torch.tensor([1.0])
    per_token, _ = losses.clipped_surrogate(logps, old, advantages, epsilon_low=0.2, epsilon_high=0.2)
    loss = losses.token_mean(per_token, completion_mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    assert logps.grad[0].tolist() == pytest.approx([0.0, 0.0, -1 / 3, -1 / 3, 0.0, -1 / 3])
    garbage = old.clone()
    garbage[completion_mask == 0] = -50.0  # what a client sends at masked positions is ignored
    per_token_garbage, _ = losses.clipped_surrogate(logps, garbage, advantages, epsilon_low=0.2, epsilon_high=0.2)
    assert losses.token_mean(per_token_garbage, completion_mask).item() == pytest.approx(loss.item())


def test_zero_std_group_contributes_zero_loss_and_zero_gradient():
    advantages, _ = losses.group_advantages(torch.tensor([0.3, 0.3, 0.3]), [3])
    logps = torch.randn(3, 4, requires_grad=True)
    per_token, _ = losses.clipped_surrogate(logps, logps.detach() - 0.1, advantages, epsilon_low=0.2, epsilon_high=0.2)
    loss = losses.token_mean(per_token, torch.ones(3, 4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logps.grad) == 0


def test_k3_kl_is_zero_at_equality_and_matches_the_formula():
    logps = torch.tensor([[-1.0, -2.0]])
    assert losses.k3_kl(logps, logps).tolist() == [[0.0, 0.0]]
    ref = logps + math.log(2.0)  # d = ln 2 -> e^d - d - 1 = 1 - ln 2
    assert losses.k3_kl(logps, ref)[0, 0].item() == pytest.approx(1 - math.log(2.0))
    assert (losses.k3_kl(logps, logps - 3.0) > 0).all()


def test_clip_fractions_count_only_clipped_generated_tokens():
    ratio = torch.tensor([[0.5, 1.5, 1.5, 1.0], [0.5, 1.5, 1.0, 1.0]])
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    counts = losses.clip_fractions(ratio, advantages, mask, epsilon_low=0.2, epsilon_high=0.2)
    # row 0 (A > 0): only ratio 1.5 on a generated token is clipped high; row 1 (A < 0): ratio 0.5 clipped low
    assert counts["high"].item() == 1.0
    assert counts["low"].item() == 1.0
    assert counts["region"].item() == 2.0


def test_selective_log_softmax_and_entropy_match_the_dense_versions():
    logits = torch.randn(2, 3, 11)
    index = torch.randint(0, 11, (2, 3))
    dense = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(losses.selective_log_softmax(logits, index), dense, atol=1e-6)
    uniform = torch.zeros(1, 1, 8)
    assert losses.entropy_from_logits(uniform).item() == pytest.approx(math.log(8))
