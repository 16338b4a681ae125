"""`POST /v1/logprobs`: the teacher model's log-probabilities of given tokens, in-process and through a remote
OpenAI-compatible server (`prompt_logprobs`), against a plain transformers forward pass of the same checkpoint."""

import random

import pytest
import torch
from fastapi.testclient import TestClient

from services.teacher.app import create_app
from shared.models.builtin import ensure_builtin_model
from shared.models.loading import load_causal_lm, load_tokenizer
from shared.models.tokenizer_identity import tokenizer_info
from tests.plain_logprobs import plain_logprobs
from tests.service_process import ServiceProcess
from tests.teacher.conftest import teacher_config


def sequences(n: int, *, seed: int, vocab: int) -> list[dict]:
    """Token sequences of varying lengths, each with a prompt, two scored turns and an unscored observation."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, turn, observation, second = (rng.randint(3, 30) for _ in range(4))
        ids = [rng.randrange(3, vocab) for _ in range(prompt + turn + observation + second)]
        mask = [0] * prompt + [1] * turn + [0] * observation + [1] * second
        out.append({"token_ids": ids, "score_mask": mask})
    return out


def reference(model_dir, items: list[dict]) -> list[list[float]]:
    """log p(token t | tokens < t) where the mask is 1 (0.0 elsewhere), from plain transformers."""
    scores = plain_logprobs(model_dir, [item["token_ids"] for item in items])
    return [[0.0] + [lp if bit else 0.0 for lp, bit in zip(values.tolist(), item["score_mask"][1:])]
            for values, item in zip(scores, items)]


@pytest.fixture(scope="module")
def teacher_dir(score_home):
    return ensure_builtin_model("teacher", score_home)


@pytest.fixture(scope="module")
def model_client(score_home, teacher_dir):
    with TestClient(create_app(teacher_config(score_home, engine="transformers", model=str(teacher_dir)))) as client:
        yield client


def assert_matches(body: dict, items: list[dict], expected: list[list[float]]) -> None:
    assert len(body["sequences"]) == len(items)
    for item, scored, want in zip(items, body["sequences"], expected):
        assert scored["scored_tokens"] == sum(item["score_mask"])
        assert len(scored["logprobs"]) == len(item["token_ids"])
        assert max(abs(a - b) for a, b in zip(scored["logprobs"], want)) < 1e-5


def test_in_process_teacher_scores_as_a_plain_forward_pass(model_client, teacher_dir):
    items = sequences(9, seed=1, vocab=2000)
    response = model_client.post("/v1/logprobs", json={"sequences": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_matches(body, items, reference(teacher_dir, items))
    # Every token up to each sequence's last scored one is read, and counted.
    assert body["cost"]["teacher_prompt_tokens"] == sum(len(i["token_ids"]) for i in items)
    assert body["cost"]["teacher_calls"] == len(items) and body["cost"]["teacher_tokens"] == 0
    metrics = model_client.get("/metrics").text
    assert 'score_teacher_total{counter="scored_tokens",service="teacher"}' in metrics


def test_a_sequence_with_nothing_to_score_reads_nothing(model_client):
    item = {"token_ids": [5, 6, 7], "score_mask": [0, 0, 0]}
    body = model_client.post("/v1/logprobs", json={"sequences": [item]}).json()
    assert body["sequences"] == [{"logprobs": [0.0, 0.0, 0.0], "scored_tokens": 0}]
    assert body["cost"]["teacher_prompt_tokens"] == 0


def test_another_tokenizer_is_refused_naming_both(model_client):
    own = model_client.post("/v1/logprobs", json={"sequences": sequences(1, seed=2, vocab=100)}).json()["tokenizer"]
    other = {"name": "Qwen/Qwen3-0.6B", "vocab_size": 151669, "fingerprint": "ab" * 32}
    response = model_client.post("/v1/logprobs", json={"sequences": sequences(1, seed=2, vocab=100), "tokenizer": other})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "body.tokenizer"
    assert "Qwen/Qwen3-0.6B" in error["message"] and own["name"] in error["message"]
    same = model_client.post("/v1/logprobs", json={"sequences": sequences(1, seed=2, vocab=100), "tokenizer": own})
    assert same.status_code == 200


def test_bad_sequences_are_refused_naming_the_field(model_client):
    vocab = model_client.post("/v1/logprobs", json={"sequences": sequences(1, seed=3, vocab=100)}).json()["tokenizer"]["vocab_size"]
    cases = [
        ({"token_ids": [1, 2, vocab], "score_mask": [0, 1, 1]}, "body.sequences.0.token_ids"),
        ({"token_ids": [1, 2, 3], "score_mask": [0, 1]}, "body.sequences.0.score_mask"),
        ({"token_ids": [1, 2, 3], "score_mask": [1, 1, 1]}, "body.sequences.0.score_mask"),
    ]
    for item, param in cases:
        response = model_client.post("/v1/logprobs", json={"sequences": [item]})
        assert response.status_code == 422, item
        assert response.json()["error"]["param"] == param


def test_the_expert_has_no_log_probabilities(expert_client):
    response = expert_client.post("/v1/logprobs", json={"sequences": sequences(1, seed=4, vocab=100)})
    assert response.status_code == 422
    assert "without a model" in response.json()["error"]["message"]


@pytest.mark.slow
def test_remote_teacher_scores_through_prompt_logprobs(score_home, teacher_dir, tmp_path):
    """The teacher's `openai` engine against a real server process (our student service serving the teacher's
    checkpoint, as vLLM would): the same log-probabilities through vLLM's `prompt_logprobs`."""
    server = ServiceProcess("student", "--model", str(teacher_dir), home=score_home, log_dir=tmp_path)
    try:
        server.wait_ready()
        items = sequences(5, seed=5, vocab=2000)
        config = teacher_config(score_home, engine="openai", base_url=f"{server.url}/v1", model=str(teacher_dir))
        with TestClient(create_app(config)) as teacher:
            response = teacher.post("/v1/logprobs", json={"sequences": items})
            assert response.status_code == 200, response.text
            assert_matches(response.json(), items, reference(teacher_dir, items))
        assert "path=/v1/completions status=200" in server.log_tail(200_000)
    finally:
        server.stop()


def test_a_teacher_with_another_vocabulary_refuses_the_students_tokens(score_home, tmp_path, teacher_dir):
    """A real second tokenizer: the teacher checkpoint saved with one token added (and its embeddings resized)."""
    model, tokenizer = load_causal_lm(teacher_dir, device="cpu", dtype=torch.float32)
    tokenizer.add_tokens(["<extra_token>"])
    model.resize_token_embeddings(len(tokenizer))
    other = tmp_path / "teacher-other-vocab"
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    student = tokenizer_info(load_tokenizer(ensure_builtin_model("student", score_home)), "builtin:student")
    with TestClient(create_app(teacher_config(score_home, engine="transformers", model=str(other)))) as client:
        response = client.post("/v1/logprobs", json={"sequences": sequences(1, seed=6, vocab=100),
                                                     "tokenizer": student.model_dump()})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "body.tokenizer"
    assert "'builtin:student'" in error["message"] and other.name in error["message"]
    assert f"{len(tokenizer)} tokens" in error["message"] and f"{student.vocab_size} tokens" in error["message"]
