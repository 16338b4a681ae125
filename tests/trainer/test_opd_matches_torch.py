"""On-policy distillation's numbers, through the real services, against plain torch/transformers.

The student service samples episodes, the teacher service scores them (`POST /v1/logprobs`), and the trainer turns
them into per-token advantages -coef * (log p_student - log p_teacher). The same advantages are computed here
directly from the two checkpoints, one unpadded forward pass per episode; they must agree within 1e-5, and so must
the trainer service's reported `teacher_kl` (the mean reverse KL over generated tokens)."""

from __future__ import annotations

import httpx
import pytest
import torch

from services.trainer.grpo.step import _advantages, pad_mini_batch, per_token_logps
from shared.models.builtin import ensure_builtin_model
from shared.models.loading import load_causal_lm
from shared.schemas.agent import Episode
from shared.schemas.rl import RLSample
from shared.tasks.builtin import builtin_tasks
from tests.plain_logprobs import plain_logprobs
from tests.service_process import fresh_home, model_services

pytestmark = pytest.mark.slow
COEF = 0.7


@pytest.fixture(scope="module")
def services(score_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("opd-torch")
    with model_services(fresh_home(score_home, root), root, env={"OMP_NUM_THREADS": "1"},
                        teacher_args=("--engine", "transformers", "--model", "builtin:teacher")) as running:
        yield running


def test_reverse_kl_advantages_from_the_services_match_plain_torch(services, score_home):
    student, teacher, trainer = (services[name].url for name in ("student", "teacher", "trainer"))
    tasks = [t.model_dump(mode="json") for t in builtin_tasks(n=3, seed=11)]
    rollouts = httpx.post(f"{student}/v1/rollouts", timeout=300, json={
        "items": [{"task": t} for t in tasks], "n": 2, "max_turns": 2,
        "sampling": {"temperature": 1.0, "max_tokens": 32, "seed": 5}}).json()
    episodes = rollouts["episodes"]
    tokenizer = httpx.get(f"{student}/v1/weights", timeout=10).json()["tokenizer"]
    scored = httpx.post(f"{teacher}/v1/logprobs", timeout=300, json={"tokenizer": tokenizer, "sequences": [
        {"token_ids": e["token_ids"], "score_mask": e["loss_mask"]} for e in episodes]})
    assert scored.status_code == 200, scored.text
    teacher_logprobs = [s["logprobs"] for s in scored.json()["sequences"]]

    student_dir, teacher_dir = ensure_builtin_model("student", score_home), ensure_builtin_model("teacher", score_home)
    sequences = [e["token_ids"] for e in episodes]
    plain_student, plain_teacher = plain_logprobs(student_dir, sequences), plain_logprobs(teacher_dir, sequences)
    masks = [torch.tensor(e["loss_mask"][1:], dtype=torch.float32) for e in episodes]
    expected = [-COEF * (s - t) * m for s, t, m in zip(plain_student, plain_teacher, masks)]
    for scores, t, m in zip(teacher_logprobs, plain_teacher, masks):  # the teacher service's own numbers
        assert (torch.tensor(scores[1:]) - t * m).abs().max().item() < 1e-5

    # The trainer's computation on the same batch (its padding, its forward pass, its advantage function).
    samples = [RLSample.from_episode(Episode.model_validate(e), 0.0).model_copy(update={"teacher_logprobs": lp})
               for e, lp in zip(episodes, teacher_logprobs)]
    model, _ = load_causal_lm(student_dir, device="cpu", dtype=torch.float32)
    batch = pad_mini_batch(samples, torch.zeros(len(samples)), pad_id=0, device="cpu")
    with torch.no_grad():
        batch.student_per_token_logps = per_token_logps(model, batch)[0].float()
    advantages, _ = _advantages(batch, COEF)
    worst = 0.0
    for row, want in enumerate(expected):
        got = advantages[row, : len(want) - batch.start]
        worst = max(worst, (got - want[batch.start:]).abs().max().item())
    print(f"max |advantage difference| {worst:.2e} over {int(sum(m.sum() for m in masks))} generated tokens")
    assert worst < 1e-5, worst

    # Through the trainer service: its reported teacher_kl is the mean reverse KL over the generated tokens.
    session = httpx.post(f"{trainer}/v1/rl/sessions", timeout=120, json={
        "session_id": "opd-torch", "base": "builtin:student", "initial_policy_version": rollouts["policy_version"],
        "hyperparameters": {"learning_rate": 1e-6, "teacher_kl_coef": COEF}}).json()
    step = httpx.post(f"{trainer}/v1/rl/sessions/{session['id']}/steps", timeout=300, json={
        "groups": [{"samples": [s.model_dump(mode="json") for s in samples]}]})
    assert step.status_code == 200, step.text
    tokens = sum(m.sum() for m in masks)
    mean_kl = sum(((s - t) * m).sum() for s, t, m in zip(plain_student, plain_teacher, masks)) / tokens
    assert step.json()["metrics"]["teacher_kl"] == pytest.approx(mean_kl.item(), abs=1e-5)

    # A sample without the teacher's scores is refused by a session that trains on them, naming the field.
    bare = samples[0].model_dump(mode="json") | {"teacher_logprobs": None, "policy_version": step.json()["policy_version"]}
    refused = httpx.post(f"{trainer}/v1/rl/sessions/{session['id']}/steps", timeout=60,
                         json={"groups": [{"samples": [bare]}]})
    assert refused.status_code == 422
    assert refused.json()["error"]["param"] == "body.groups.0.samples.0.teacher_logprobs"
