"""The student service through its HTTP API (in-process app, real model, real sandboxes)."""

import pytest
import torch

from shared.agent.format import episode_messages
from shared.scoring import score_answer
from shared.tasks.builtin import builtin_tasks
from shared.tasks.expert import expert_steps
from shared.tasks.gold import gold_episode


def test_health_ready_models_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["engine"] == "transformers"
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == ready["model"]
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    text = client.get("/metrics").text
    assert "score_http_requests_total" in text and 'counter="generated_tokens"' in text


def test_chat_completion_shape_and_usage(client):
    body = {"messages": [{"role": "user", "content": "Compute 3 + 4."}], "max_tokens": 8, "n": 3, "seed": 1,
            "temperature": 0.9, "logprobs": True}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["choices"]) == 3
    generated = sum(len(c["logprobs"]["content"]) for c in data["choices"])
    assert data["usage"]["completion_tokens"] == generated
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + generated
    again = client.post("/v1/chat/completions", json=body).json()
    assert [c["message"]["content"] for c in again["choices"]] == [c["message"]["content"] for c in data["choices"]]


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", {"messages": []}, "body.messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "body.max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 1000}, "body.n"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "body.messages.0.role"),
        ("/v1/rollouts", {"items": []}, "body.items"),
        ("/v1/rollouts", {"items": [{"task": {"id": "a", "question": "q"}}], "n": 0}, "body.n"),
        ("/v1/rollouts", {"items": [{"task": {"id": "a"}}]}, "body.items.0.task.question"),
        ("/v1/rollouts", {"items": [{"task": {"id": "a", "question": "q"},
                                     "prefix_steps": [{"kind": "act", "code": "print(1)"}]}]}, "body.items.0"),
        ("/v1/rollouts", {"items": [{"task": {"id": "a", "question": "q"},
                                     "prefix_steps": [{"kind": "plan"}, {"kind": "think"}]}]}, "body.items.0.prefix_steps.1.kind"),
        ("/v1/rollouts", {"items": [{"task": {"id": "a", "question": "q"}}] * 20, "n": 64}, "body"),
        ("/v1/completions", {"prompt": [10**9], "max_tokens": 1}, "body.prompt"),
        ("/v1/weights", {"version": 3}, "body"),
    ],
)
def test_bad_input_gets_422_naming_the_field(client, path, body, param):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"]


def test_generation_requests_are_announced_to_the_engine_and_always_settled(client):
    """Each generation request is announced once its body is in, and settled however it ends: one left
    pending would hold the engine's next batch and steps for its whole window."""
    engine = client.app.state.serving.engine
    before = engine.stats()["announced_requests"]
    chat = {"messages": [{"role": "user", "content": "Compute 2 + 2."}], "max_tokens": 2}
    statuses = [
        client.post("/v1/chat/completions", json=chat).status_code,
        client.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 2}).status_code,
        client.post("/v1/chat/completions", json={**chat, "model": "not-served"}).status_code,
        client.post("/v1/chat/completions", json={"messages": []}).status_code,
        client.post("/v1/completions", json={"prompt": [10**9], "max_tokens": 1}).status_code,
        client.get("/v1/models").status_code,
    ]
    assert statuses == [200, 200, 404, 422, 422, 200]
    assert engine.stats()["announced_requests"] - before == 5  # every POST to a generation route, answered or not
    assert not engine._arrivals._pending


def test_unknown_model_and_checkpoint_are_404(client):
    response = client.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 404 and response.json()["error"]["param"] == "body.model"
    response = client.post("/v1/weights", json={"name": "missing", "version": 1})
    assert response.status_code == 404 and response.json()["error"]["param"] == "body.name"


@pytest.mark.parametrize("family", ["arith", "kb"])
def test_rollout_replays_an_expert_prefix_and_the_rest_reaches_the_gold_answer(client, family):
    task = builtin_tasks(family=family, split="eval", n=1, seed=4)[0]
    gold = gold_episode(task)
    steps = expert_steps(task)
    cut = max(2, len(steps) - 1)
    item = lambda prefix: {"task": task.model_dump(mode="json"), "prefix_steps": [s.model_dump() for s in prefix]}
    response = client.post("/v1/rollouts", json={"items": [item(steps[:cut]), item(steps)], "max_turns": 0})
    assert response.status_code == 200, response.text
    partial, full = response.json()["episodes"]
    assert [s["observation"] for s in partial["steps"]] == [s.observation for s in gold.steps[:cut]]
    assert partial["stop_reason"] == "prefix_only" and not partial["finished"]
    assert full["finished"] and full["stop_reason"] == "final_answer"
    assert score_answer(full["final_answer"], task.true_answer).correct


def test_rollout_token_data_lines_up(client):
    task = builtin_tasks(family="arith", split="eval", n=1, seed=2)[0]
    prefix = expert_steps(task)[:2]
    body = {"items": [{"task": task.model_dump(mode="json"), "prefix_steps": [s.model_dump() for s in prefix]},
                      {"task": task.model_dump(mode="json")}],
            "n": 2, "max_turns": 3, "sampling": {"temperature": 1.0, "max_tokens": 48, "seed": 11}}
    response = client.post("/v1/rollouts", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    episodes = data["episodes"]
    assert len(episodes) == 4 and all(e["policy_version"] == data["policy_version"] for e in episodes)
    serving = client.app.state.serving
    tokenizer, model = serving.engine.tokenizer, serving.engine.model
    for episode in episodes:
        ids, mask, logprobs = episode["token_ids"], episode["loss_mask"], episode["logprobs"]
        assert len(ids) == len(mask) == len(logprobs)
        n_prefix = episode["n_prefix_steps"]
        from shared.schemas.agent import Step, Task

        prefix_steps = [Step(**s) for s in episode["steps"][:n_prefix]]
        expected_prompt = tokenizer.apply_chat_template(
            episode_messages(Task(**body["items"][0]["task"]), prefix_steps), add_generation_prompt=True, tokenize=False
        )
        assert tokenizer.decode(ids[: episode["prompt_length"]]) == expected_prompt
        assert set(mask[: episode["prompt_length"]]) == {0}
        # Each run of generated tokens is one model turn, in step order, and decodes to that step's raw text.
        runs, current = [], []
        for token, flag in zip(ids, mask):
            if flag:
                current.append(token)
            elif current:
                runs, current = runs + [current], []
        runs += [current] if current else []
        model_steps = episode["steps"][n_prefix:]
        assert len(runs) == len(model_steps) >= 1
        for run, step in zip(runs, model_steps):
            assert tokenizer.decode(run, skip_special_tokens=True) == step["raw"]
        # Behaviour logprobs equal a teacher-forced forward pass over the whole episode.
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
        positions = [i for i, flag in enumerate(mask) if flag]
        assert torch.allclose(logp[[p - 1 for p in positions]], torch.tensor([logprobs[p] for p in positions]), atol=2e-3)
        assert all(logprobs[i] == 0.0 for i, flag in enumerate(mask) if not flag)
