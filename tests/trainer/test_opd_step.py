"""On-policy distillation inside a GRPO step: per-token advantages and the reverse-KL term to the teacher."""

import copy

import pytest
import torch

from services.trainer.grpo import losses
from services.trainer.grpo.step import grpo_step
from shared.schemas.rl import GRPOHyperparameters
from shared.models.loading import load_causal_lm
from tests.trainer.grpo_samples import adamw, behaviour_samples


@pytest.fixture(scope="module")
def student(student_model_dir):
    return load_causal_lm(student_model_dir, device="cpu", dtype=torch.float32)


def with_fields(samples, **per_sample):
    """Copies of `samples` with per-token fields set from functions of each sample."""
    return [s.model_copy(update={name: make(s) for name, make in per_sample.items()}) for s in samples]


def test_reverse_kl_advantages_are_minus_coef_times_the_log_ratio_on_generated_tokens_only():
    behaviour = torch.tensor([[-1.0, -2.0, -0.5]])
    teacher = torch.tensor([[-0.5, -3.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    advantages, reverse_kl = losses.reverse_kl_advantages(behaviour, teacher, mask, coef=2.0)
    assert reverse_kl.tolist() == [[-0.5, 1.0, 0.0]]
    assert advantages.tolist() == [[1.0, -2.0, -0.0]]


def test_per_token_advantages_equal_to_the_group_ones_give_the_same_update(student):
    """A group with rewards (1, 0) and the same group with equal rewards but those advantages as token_advantages
    must move the weights identically: the per-token path is the sequence path broadcast."""
    base = behaviour_samples(student[0], [1.0, 0.0])
    plain_model, token_model = copy.deepcopy(student[0]), copy.deepcopy(student[0])
    hp = GRPOHyperparameters(learning_rate=1e-3)
    plain = grpo_step(plain_model, adamw(plain_model), [base], hp, pad_id=0)
    advantage = 1.0 / (torch.tensor([1.0, 0.0]).std().item() + losses.ADVANTAGE_EPS) / 2
    tokens = with_fields(base, token_advantages=lambda s: [advantage if s.reward else -advantage] * len(s.token_ids))
    tokens = [s.model_copy(update={"reward": 0.0}) for s in tokens]
    per_token = grpo_step(token_model, adamw(token_model), [tokens], hp, pad_id=0)
    for (name, p), q in zip(plain_model.named_parameters(), token_model.parameters()):
        assert torch.allclose(p, q, atol=1e-7), name
    assert per_token["loss"] == pytest.approx(plain["loss"], abs=1e-6)
    assert per_token["advantages/token_abs_mean"] == pytest.approx(advantage, rel=1e-5)


def test_teacher_logprobs_with_coef_zero_are_reported_not_trained_on(student):
    base = behaviour_samples(student[0], [1.0, 0.0])
    scored = with_fields(base, teacher_logprobs=lambda s: [lp - 0.25 if m else 0.0 for lp, m in zip(s.logprobs, s.loss_mask)])
    plain_model, scored_model = copy.deepcopy(student[0]), copy.deepcopy(student[0])
    hp = GRPOHyperparameters(learning_rate=1e-3)
    grpo_step(plain_model, adamw(plain_model), [base], hp, pad_id=0)
    metrics = grpo_step(scored_model, adamw(scored_model), [scored], hp, pad_id=0)
    assert metrics["teacher_kl"] == pytest.approx(0.25, abs=1e-6)  # behaviour - teacher on every generated token
    for p, q in zip(plain_model.parameters(), scored_model.parameters()):
        assert torch.equal(p, q)


def test_the_reverse_kl_term_moves_the_student_toward_the_teacher(student):
    """Groups of one (no reward signal): the teacher rates the sampled tokens above the student on one sample and
    below on the other, so the update raises the first's log-probabilities and lowers the second's."""
    model = copy.deepcopy(student[0])
    up, down = behaviour_samples(model, [0.0, 0.0], seed=3)
    up = with_fields([up], teacher_logprobs=lambda s: [lp + 1.0 if m else 0.0 for lp, m in zip(s.logprobs, s.loss_mask)])[0]
    down = with_fields([down], teacher_logprobs=lambda s: [lp - 1.0 if m else 0.0 for lp, m in zip(s.logprobs, s.loss_mask)])[0]

    def mean_logp(sample) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([sample.token_ids])).logits[0].float(), -1)
        picked = [logp[t - 1, sample.token_ids[t]].item() for t in range(1, len(sample.token_ids)) if sample.loss_mask[t]]
        return sum(picked) / len(picked)

    before = (mean_logp(up), mean_logp(down))
    hp = GRPOHyperparameters(learning_rate=1e-3, teacher_kl_coef=1.0, max_logprob_diff=None)
    optimizer = adamw(model)
    for _ in range(3):
        metrics = grpo_step(model, optimizer, [[up], [down]], hp, pad_id=0)
    assert metrics["frac_reward_zero_std"] == 1.0 and metrics["teacher_kl_coef"] == 1.0
    assert mean_logp(up) > before[0] + 0.05
    assert mean_logp(down) < before[1] - 0.05
