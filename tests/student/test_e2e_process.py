"""The student service as a real process: the official openai client, and a remote engine chained to it."""

import httpx
import pytest
from openai import OpenAI

from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps
from tests.service_process import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student(score_home, tmp_path_factory):
    service = ServiceProcess("student", home=score_home, log_dir=tmp_path_factory.mktemp("logs"))
    try:
        yield service.wait_ready()
    finally:
        service.stop()


def test_openai_client_chat_completion(student):
    client = OpenAI(base_url=f"{student.url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Compute 2 + 2."}], max_tokens=10, n=2, seed=3,
        temperature=0.8, stop=["\n\n"],
    )
    assert len(completion.choices) == 2
    assert completion.usage.completion_tokens > 0
    assert all(choice.finish_reason in ("stop", "length") for choice in completion.choices)
    with pytest.raises(Exception) as bad:
        client.chat.completions.create(model=model, messages=[], max_tokens=5)
    assert "messages" in str(bad.value)


def test_remote_engine_rollouts_through_a_second_service(student, score_home, tmp_path):
    remote = ServiceProcess(
        "student", "--engine", "openai", "--base-url", f"{student.url}/v1", home=score_home, log_dir=tmp_path
    )
    try:
        remote.wait_ready()
        task = builtin_tasks(family="arith", split="eval", n=1, seed=9)[0]
        body = {"items": [{"task": task.model_dump(mode="json"),
                           "prefix_steps": [s.model_dump() for s in expert_steps(task)[:2]]}],
                "n": 2, "max_turns": 2, "sampling": {"temperature": 1.0, "max_tokens": 32, "seed": 1}}
        via_remote = httpx.post(f"{remote.url}/v1/rollouts", json=body, timeout=120).json()
        direct = httpx.post(f"{student.url}/v1/rollouts", json=body, timeout=120).json()
        for a, b in zip(via_remote["episodes"], direct["episodes"]):
            assert len(a["token_ids"]) == len(a["loss_mask"]) == len(a["logprobs"])
            assert a["token_ids"] == b["token_ids"]  # same seeds, same model: the remote path is token-exact
            assert a["loss_mask"] == b["loss_mask"]
    finally:
        remote.stop()
