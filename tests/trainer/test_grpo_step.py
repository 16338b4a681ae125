"""One GRPO update on the built-in tiny student: real forward/backward passes, real optimizer steps."""

import copy

import pytest
import torch

from services.trainer.grpo.step import grpo_step
from shared.models.loading import load_causal_lm
from shared.schemas.rl import GRPOHyperparameters
from tests.trainer.grpo_samples import adamw, behaviour_samples


@pytest.fixture(scope="module")
def student(student_model_dir):
    model, tokenizer = load_causal_lm(student_model_dir, device="cpu", dtype=torch.float32)
    return model, tokenizer


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]


def test_a_step_with_reward_differences_changes_the_parameters(student):
    model = copy.deepcopy(student[0])
    samples = behaviour_samples(model, [1.0, 0.0, 0.5, 0.0])
    before = snapshot(model)
    metrics = grpo_step(model, adamw(model), [samples[:2], samples[2:]], GRPOHyperparameters(learning_rate=1e-3), pad_id=0)
    moved = changed(model, before)
    assert len(moved) == len(before)  # every parameter tensor got a gradient and moved
    assert metrics["grad_norm"] > 0
    assert metrics["importance_ratio/mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy: trainer == behaviour
    assert metrics["frac_reward_zero_std"] == 0.0
    assert metrics["padding_share"] > 0  # lengths differ, so the mini-batch is right-padded
    assert metrics["clip_ratio"] == 0.0


def test_zero_advantages_leave_the_parameters_untouched(student):
    model = copy.deepcopy(student[0])
    samples = behaviour_samples(model, [0.7, 0.7, 0.7, 0.2])  # one equal-reward group, one group of one
    before = snapshot(model)
    metrics = grpo_step(model, adamw(model), [samples[:3], samples[3:]], GRPOHyperparameters(learning_rate=1e-3), pad_id=0)
    assert changed(model, before) == []
    assert metrics["frac_reward_zero_std"] == 1.0
    assert metrics["grad_norm"] == 0.0
    assert metrics["loss"] == 0.0


def test_with_zero_advantages_only_the_kl_term_moves_a_drifted_policy(student):
    reference = student[0]
    drifted = copy.deepcopy(reference)
    with torch.no_grad():
        drifted.model.norm.weight.mul_(1.5)  # the policy has left its reference
    samples = behaviour_samples(drifted, [1.0, 1.0, 1.0])

    without_kl = copy.deepcopy(drifted)
    before = snapshot(without_kl)
    grpo_step(without_kl, adamw(without_kl), [samples], GRPOHyperparameters(learning_rate=1e-3), pad_id=0)
    assert changed(without_kl, before) == []

    with_kl = copy.deepcopy(drifted)
    hp = GRPOHyperparameters(learning_rate=1e-3, beta=0.1)
    metrics = grpo_step(with_kl, adamw(with_kl), [samples], hp, pad_id=0, ref_model=reference)
    assert metrics["kl"] > 0
    assert metrics["loss"] == pytest.approx(0.1 * metrics["kl"], rel=1e-4)  # the policy term is exactly 0
    distance = lambda m: (m.model.norm.weight - reference.model.norm.weight).abs().sum().item()  # noqa: E731
    assert distance(with_kl) < distance(drifted)  # pulled back towards the reference


@pytest.mark.parametrize("loss_type", ["token_mean", "sequence_mean"])
def test_mini_batch_size_does_not_change_the_update(student, loss_type):
    """Accumulating over mini-batches (with padding) gives the gradient of one unpadded full-batch pass."""
    base = student[0]
    samples = behaviour_samples(base, [1.0, 0.0, 0.25, 0.75, 0.5])
    groups = [samples[:2], samples[2:]]
    results = []
    for mini_batch_size in (1, 2, 5):
        model = copy.deepcopy(base)
        before = snapshot(model)
        hp = GRPOHyperparameters(mini_batch_size=mini_batch_size, loss_type=loss_type, max_grad_norm=None)
        grpo_step(model, torch.optim.SGD(model.parameters(), lr=1.0), groups, hp, pad_id=0)
        results.append({name: before[name] - p.detach() for name, p in model.named_parameters()})  # = the gradient
    for other in results[1:]:
        for name, grad in results[0].items():
            assert torch.allclose(grad, other[name], atol=1e-6, rtol=1e-4), name


def test_two_iterations_reuse_the_batch_and_report_clipping(student):
    model = copy.deepcopy(student[0])
    samples = behaviour_samples(model, [1.0, 0.0, 1.0, 0.0])
    hp = GRPOHyperparameters(learning_rate=5e-2, num_iterations=2, epsilon=0.05)
    metrics = grpo_step(model, adamw(model, lr=5e-2), [samples], hp, pad_id=0)
    # after the first update the ratios leave [0.95, 1.05]: the second pass clips some tokens
    assert metrics["clip_ratio"] > 0
    assert metrics["clip_ratio"] == pytest.approx(metrics["clip_ratio/low_mean"] + metrics["clip_ratio/high_mean"])


def test_per_token_logps_skip_the_prompt_but_match_a_full_forward(student):
    from services.trainer.grpo.step import pad_mini_batch, per_token_logps

    model = student[0]
    samples = behaviour_samples(model, [0.0, 1.0, 0.5], prompt_len=7)
    batch = pad_mini_batch(samples, torch.zeros(3), pad_id=0, device="cpu")
    assert batch.start == 6 and batch.completion_mask.shape == (3, batch.input_ids.shape[1] - 7)
    with torch.no_grad():
        logps, entropy = per_token_logps(model, batch, with_entropy=True)
        for row, sample in enumerate(samples):  # each sample alone, unpadded, every position
            ids = torch.tensor([sample.token_ids])
            full = torch.log_softmax(model(ids).logits[0].float(), -1)
            expected = [full[t - 1, sample.token_ids[t]].item() for t in range(7, len(sample.token_ids))]
            got = logps[row, : len(expected)].tolist()
            assert got == pytest.approx(expected, abs=1e-5)
    assert entropy.shape == logps.shape


def test_on_policy_samples_report_their_logprob_difference(student):
    model = copy.deepcopy(student[0])
    samples = behaviour_samples(model, [1.0, 0.0, 0.5, 0.0])
    metrics = grpo_step(model, adamw(model), [samples[:2], samples[2:]], GRPOHyperparameters(), pad_id=0)
    assert metrics["logprob_diff/checked_samples"] == 4
    assert metrics["logprob_diff/mean"] <= 1e-5 and metrics["logprob_diff/max"] <= 1e-4
    assert metrics["logprob_diff/dropped_samples"] == 0


def _mislabelled(sample, shift=-1.0):
    """The same tokens with behaviour logprobs from some other model: every generated token off by `shift`."""
    return sample.model_copy(update={"logprobs": [lp + shift if bit else 0.0 for lp, bit in zip(sample.logprobs, sample.loss_mask)]})


@pytest.mark.parametrize("loss_type", ["token_mean", "sequence_mean"])
def test_a_sample_beyond_the_bound_is_dropped_as_if_it_had_no_generated_tokens(student, loss_type):
    base = student[0]
    samples = behaviour_samples(base, [1.0, 0.0, 0.25, 0.75])
    bad = [samples[0], samples[1], _mislabelled(samples[2]), samples[3]]
    silenced = [samples[0], samples[1], samples[2].model_copy(update={"loss_mask": [0] * len(samples[2].loss_mask)}),
                samples[3]]
    hp = GRPOHyperparameters(max_grad_norm=None, loss_type=loss_type, mini_batch_size=2, max_logprob_diff=0.5)
    updates, all_metrics = [], []
    for batch in (bad, silenced):
        model = copy.deepcopy(base)
        before = snapshot(model)
        all_metrics.append(grpo_step(model, torch.optim.SGD(model.parameters(), lr=1.0), [batch[:2], batch[2:]], hp, pad_id=0))
        updates.append({name: before[name] - p.detach() for name, p in model.named_parameters()})
    for name, grad in updates[0].items():
        assert torch.allclose(grad, updates[1][name], atol=1e-6, rtol=1e-4), name
    metrics = all_metrics[0]
    assert metrics["logprob_diff/dropped_samples"] == 1 and metrics["logprob_diff/checked_samples"] == 4
    assert metrics["logprob_diff/max"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["loss"] == pytest.approx(all_metrics[1]["loss"], rel=1e-4, abs=1e-7)


def test_stale_samples_are_not_checked_and_no_bound_drops_nothing(student):
    model = copy.deepcopy(student[0])
    samples = [_mislabelled(s) for s in behaviour_samples(model, [1.0, 0.0])]
    stale = grpo_step(copy.deepcopy(model), adamw(model), [samples], GRPOHyperparameters(), pad_id=0,
                      on_policy=[False, False])
    assert stale["logprob_diff/checked_samples"] == 0 and stale["logprob_diff/dropped_samples"] == 0
    unbounded = grpo_step(copy.deepcopy(model), adamw(model), [samples], GRPOHyperparameters(max_logprob_diff=None),
                          pad_id=0)
    assert unbounded["logprob_diff/checked_samples"] == 2 and unbounded["logprob_diff/dropped_samples"] == 0
    assert unbounded["logprob_diff/mean"] == pytest.approx(1.0, abs=1e-3)


def test_when_every_sample_is_dropped_the_weights_stay(student):
    model = copy.deepcopy(student[0])
    samples = [_mislabelled(s) for s in behaviour_samples(model, [1.0, 0.0])]
    before = snapshot(model)
    metrics = grpo_step(model, adamw(model), [samples], GRPOHyperparameters(learning_rate=1e-3), pad_id=0)
    assert metrics["logprob_diff/dropped_samples"] == 2
    assert changed(model, before) == []
