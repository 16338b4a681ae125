"""The trainer's RL endpoints, served in-process from the app factory: sessions, steps, validation, restarts."""

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from tests.trainer.rl_sessions import MADE_UP, batch, create, new_id, trainer_app
from tests.trainer.sft_jobs import tensorboard_scalars


@pytest.fixture(scope="module")
def client(score_home):
    with TestClient(trainer_app(score_home)) as client:
        yield client


def assert_error(response, status: int, param: str, text: str = "") -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert text in error["message"], error


def test_create_is_idempotent_on_the_caller_id(client):
    session_id = new_id()
    body = {"session_id": session_id, "hyperparameters": {**MADE_UP, "learning_rate": 1e-3, "max_staleness": 0}}
    first = client.post("/v1/rl/sessions", json=body)
    again = client.post("/v1/rl/sessions", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json() == again.json()
    info = first.json()
    assert info["base"] == "builtin:student" and info["output_name"] == f"rl-{session_id}"
    assert info["policy_version"] == 0 and info["checkpoint"] is None and info["loaded"] is False
    assert info["hyperparameters"]["epsilon"] == 0.2 and info["hyperparameters"]["beta"] == 0.0
    other = client.post("/v1/rl/sessions", json={**body, "hyperparameters": {"learning_rate": 2e-3}})
    assert_error(other, 409, "body.session_id", "different body")
    assert client.get(f"/v1/rl/sessions/{session_id}").json()["id"] == session_id
    assert session_id in [s["id"] for s in client.get("/v1/rl/sessions").json()["sessions"]]


def test_a_step_publishes_the_next_checkpoint_version(client, score_home):
    info = create(client, initial_policy_version=3)
    response = client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch(version=3))
    assert response.status_code == 200, response.text
    step = response.json()
    assert step["policy_version"] == 4 and step["step"] == 1
    checkpoint = step["checkpoint"]
    assert checkpoint["name"] == info["output_name"] and checkpoint["version"] == 1
    assert (Path(checkpoint["path"]) / "model.safetensors").is_file()
    assert (Path(checkpoint["path"]) / "tokenizer.json").is_file()
    metrics = step["metrics"]
    for name in ("reward/mean", "reward_std", "frac_reward_zero_std", "clip_ratio", "entropy", "response_length/mean",
                 "loss", "grad_norm", "tokens_per_s", "policy_version", "ppo_kl"):
        assert name in metrics, name
    assert metrics["reward/mean"] == pytest.approx(2.5 / 5)
    assert metrics["response_length/mean"] == pytest.approx(sum(6 + i for i in (0, 1, 2, 0, 1)) / 5)
    assert metrics["policy_version"] == 4
    assert "kl" not in metrics  # beta = 0: no reference model, no KL
    index = json.loads((score_home / "checkpoints" / info["output_name"] / "index.json").read_text())
    lineage = index["versions"][0]
    assert lineage["parent"] == "builtin:student" and lineage["job_id"] == f"rl:{info['id']}"
    assert lineage["metrics"]["policy_version"] == 4
    session = client.get(f"/v1/rl/sessions/{info['id']}").json()
    assert session["policy_version"] == 4 and session["steps"] == 1 and session["loaded"] is True
    assert session["checkpoint"] == checkpoint
    second = client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch(version=4)).json()
    assert second["checkpoint"]["version"] == 2 and second["policy_version"] == 5
    parent = json.loads((score_home / "checkpoints" / info["output_name"] / "index.json").read_text())["versions"][1]
    assert parent["parent"] == f"{info['output_name']}/v1"


def test_report_to_tensorboard_writes_each_steps_metrics(client, score_home):
    info = create(client, hyperparameters={"learning_rate": 1e-2, "report_to": ["tensorboard"]})
    steps = [client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch(version=v)).json() for v in (0, 1)]
    log_dir = score_home / "tensorboard" / info["output_name"] / "rl"
    for name in ("reward/mean", "loss", "grad_norm"):
        curve = tensorboard_scalars(log_dir, f"train/{name}")
        assert curve == [(s["step"], pytest.approx(s["metrics"][name], rel=1e-6)) for s in steps], name
    quiet = create(client)  # report_to empty: no event files
    client.post(f"/v1/rl/sessions/{quiet['id']}/steps", json=batch())
    assert not (score_home / "tensorboard" / quiet["output_name"]).exists()


def test_stale_and_future_samples_are_refused_naming_the_sample(client):
    info = create(client, hyperparameters={**MADE_UP, "learning_rate": 1e-3, "max_staleness": 0})
    url = f"/v1/rl/sessions/{info['id']}/steps"
    assert client.post(url, json=batch(version=0)).status_code == 200  # now at version 1
    stale = batch(version=1)
    stale["groups"][1]["samples"][0]["policy_version"] = 0
    assert_error(client.post(url, json=stale), 409, "body.groups.1.samples.0.policy_version", "stale")
    future = batch(version=1)
    future["groups"][0]["samples"][2]["policy_version"] = 7
    assert_error(client.post(url, json=future), 409, "body.groups.0.samples.2.policy_version", "newer")
    assert client.get(f"/v1/rl/sessions/{info['id']}").json()["policy_version"] == 1  # nothing applied


def test_default_staleness_accepts_one_version_behind(client):
    info = create(client)
    url = f"/v1/rl/sessions/{info['id']}/steps"
    client.post(url, json=batch(version=0))
    assert client.post(url, json=batch(version=0)).status_code == 200  # 1 behind: allowed by default
    assert_error(client.post(url, json=batch(version=0)), 409, "body.groups.0.samples.0.policy_version")


def test_groups_of_one_are_accepted_with_zero_advantage(client):
    info = create(client)
    response = client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch(rewards=((1.0,), (0.0,))))
    assert response.status_code == 200, response.text
    metrics = response.json()["metrics"]
    assert metrics["frac_reward_zero_std"] == 1.0 and metrics["grad_norm"] == 0.0 and metrics["loss"] == 0.0


def test_a_retried_step_id_is_applied_once(client):
    info = create(client)
    url = f"/v1/rl/sessions/{info['id']}/steps"
    first = client.post(url, json=batch(step_id="batch-0001"))
    retry = client.post(url, json=batch(step_id="batch-0001"))
    assert first.json() == retry.json()
    assert client.get(f"/v1/rl/sessions/{info['id']}").json()["steps"] == 1


@pytest.mark.parametrize(
    "mutate, param, text",
    [
        (lambda b: b["groups"][0]["samples"][1].update(loss_mask=[0, 1]), "body.groups.0.samples.1.loss_mask", "token_ids has 11"),
        (lambda b: b["groups"][1]["samples"][0]["logprobs"].pop(), "body.groups.1.samples.0.logprobs", "align"),
        (lambda b: b["groups"][0]["samples"][0]["logprobs"].__setitem__(5, 0.4), "body.groups.0.samples.0.logprobs.5", "less than or equal to"),
        (lambda b: b["groups"][0]["samples"][0]["loss_mask"].__setitem__(0, 1), "body.groups.0.samples.0.loss_mask", "first token"),
        (lambda b: b["groups"][0]["samples"][0]["loss_mask"].__setitem__(5, 2), "body.groups.0.samples.0.loss_mask.5", "less than or equal to 1"),
        (lambda b: b["groups"][0]["samples"][0].update(prompt_length=6), "body.groups.0.samples.0.prompt_length", "inside the prompt"),
        (lambda b: b["groups"][0]["samples"][0].pop("reward"), "body.groups.0.samples.0.reward", "required"),
        (lambda b: b["groups"][1].update(samples=[]), "body.groups.1.samples", "at least 1"),
        (lambda b: b.update(groups=[]), "body.groups", "at least 1"),
        (lambda b: b["groups"][0]["samples"][0]["token_ids"].__setitem__(3, 5000), "body.groups.0.samples.0.token_ids", "vocabulary"),
    ],
)
def test_bad_batches_are_422_naming_the_field(client, mutate, param, text):
    info = create(client)
    body = batch()
    mutate(body)
    assert_error(client.post(f"/v1/rl/sessions/{info['id']}/steps", json=body), 422, param, text)
    assert client.get(f"/v1/rl/sessions/{info['id']}").json()["steps"] == 0


@pytest.mark.parametrize(
    "body, param, text",
    [
        ({"hyperparameters": {"learning_rate": 0}}, "body.hyperparameters.learning_rate", "greater than 0"),
        ({"hyperparameters": {"epsilon": 0.2, "epsilon_high": 0.1}}, "body.hyperparameters", "raise epsilon_high"),
        ({"hyperparameters": {"loss_type": "dr_grpo"}}, "body.hyperparameters.loss_type", "token_mean"),
        ({"hyperparameters": {"max_staleness": -1}}, "body.hyperparameters.max_staleness", "greater than or equal"),
        ({"hyperparameters": {"lr": 1e-3}}, "body.hyperparameters.lr", "not permitted"),
        ({"base": "no-such-checkpoint"}, "body.base", "neither a published checkpoint"),
        ({"session_id": "../etc"}, "body.session_id", "pattern"),
    ],
)
def test_bad_sessions_are_422_naming_the_field(client, body, param, text):
    assert_error(client.post("/v1/rl/sessions", json=body), 422, param, text)


def test_unknown_and_closed_sessions(client):
    assert_error(client.get("/v1/rl/sessions/nope-123"), 404, "path.session_id")
    assert_error(client.post("/v1/rl/sessions/nope-123/steps", json=batch()), 404, "path.session_id")
    info = create(client)
    closed = client.delete(f"/v1/rl/sessions/{info['id']}")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    assert_error(client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch()), 409, "path.session_id", "closed")


# Full weights, and a LoRA adapter (AdamW then holds the adapter's tensors only, and the adapter is published).
RESTART_CASES = {
    "full": ({**MADE_UP, "learning_rate": 1e-2, "weight_decay": 0.1}, "model.safetensors"),  # two AdamW groups
    "lora": ({**MADE_UP, "learning_rate": 1e-2, "lora": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj"]},
             "adapter_model.safetensors"),
}


@pytest.mark.parametrize("case", RESTART_CASES)
def test_a_restarted_trainer_continues_the_session_exactly(score_home, case):
    """Two steps in one process equal one step, a restart, and one more: weights and AdamW moments persist."""
    hyperparameters, weights_file = RESTART_CASES[case]
    continuous, split = new_id(f"{case}-cont"), new_id(f"{case}-split")
    first, second = batch(version=0), batch(version=1, rewards=((0.0, 1.0, 1.0), (1.0, 0.0)))
    with TestClient(trainer_app(score_home)) as client:
        for session_id in (continuous, split):
            create(client, session_id=session_id, hyperparameters=hyperparameters)
            assert client.post(f"/v1/rl/sessions/{session_id}/steps", json=first).status_code == 200
        client.post(f"/v1/rl/sessions/{continuous}/steps", json=second)
    assert (score_home / "trainer" / "rl" / split / "optimizer.pt").is_file()

    with TestClient(trainer_app(score_home)) as client:
        info = client.get(f"/v1/rl/sessions/{split}").json()
        assert info["policy_version"] == 1 and info["loaded"] is False and info["checkpoint"]["version"] == 1
        resumed = client.post(f"/v1/rl/sessions/{split}/steps", json=second)
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["policy_version"] == 2
        reference = client.get(f"/v1/rl/sessions/{continuous}").json()["checkpoint"]["path"]

    ours = load_file(Path(resumed.json()["checkpoint"]["path"]) / weights_file)
    theirs = load_file(Path(reference) / weights_file)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert (ours[name] - theirs[name]).abs().max().item() < 1e-6, name


def test_a_step_decays_weights_but_not_biases_or_norm_weights(client):
    """Equal rewards in every group: zero advantages and zero gradients, so the step moves only what weight decay
    moves, lr x weight_decay of each weight; biases and norm weights stay as they were."""
    info = create(client, hyperparameters={**MADE_UP, "learning_rate": 1e-2, "weight_decay": 0.5})
    step = client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch(rewards=((1.0, 1.0, 1.0), (0.0, 0.0))))
    assert step.status_code == 200, step.text
    before = load_file(Path(info["base_path"]) / "model.safetensors")
    after = load_file(Path(step.json()["checkpoint"]["path"]) / "model.safetensors")
    spared = {name for name in before if name.endswith(".bias") or "norm" in name}
    assert spared and len(spared) < len(before)
    for name, tensor in before.items():
        expected = tensor if name in spared else tensor * (1 - 1e-2 * 0.5)
        torch.testing.assert_close(after[name], expected, msg=name)


def test_rl_endpoints_require_the_token_when_one_is_set(score_home):
    with TestClient(trainer_app(score_home, api_token="rl-test-token-123")) as client:
        assert_error(client.get("/v1/rl/sessions"), 401, "header.authorization")
        ok = client.get("/v1/rl/sessions", headers={"Authorization": "Bearer rl-test-token-123"})
        assert ok.status_code == 200


def test_a_student_episode_becomes_a_sample_as_is():
    from shared.schemas.agent import Episode
    from shared.schemas.rl import RLSample

    episode = Episode(
        task_id="t1", token_ids=[5, 6, 7, 8], prompt_length=2, loss_mask=[0, 0, 1, 1],
        logprobs=[0.0, 0.0, -0.5, -1.5], policy_version=4,
    )
    sample = RLSample.from_episode(episode, reward=0.5)
    assert (sample.token_ids, sample.loss_mask, sample.prompt_length, sample.policy_version) == ([5, 6, 7, 8], [0, 0, 1, 1], 2, 4)
    with pytest.raises(ValueError, match="policy_version"):
        RLSample.from_episode(Episode(task_id="t2", token_ids=[1, 2], loss_mask=[0, 1], logprobs=[0.0, -1.0]), reward=0.0)


def test_concurrent_steps_on_one_session_are_applied_one_after_the_other(client):
    from concurrent.futures import ThreadPoolExecutor

    info = create(client)
    url = f"/v1/rl/sessions/{info['id']}/steps"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda seed: client.post(url, json=batch(version=0)), range(2)))
    assert [r.status_code for r in results] == [200, 200]
    assert sorted(r.json()["policy_version"] for r in results) == [1, 2]
    assert sorted(r.json()["checkpoint"]["version"] for r in results) == [1, 2]
    assert client.get(f"/v1/rl/sessions/{info['id']}").json()["steps"] == 2


def test_sessions_show_in_prometheus_metrics(client):
    info = create(client)
    client.post(f"/v1/rl/sessions/{info['id']}/steps", json=batch())
    text = client.get("/metrics").text
    assert f'score_rl_session{{service="trainer",session="{info["id"]}",value="policy_version"}} 1.0' in text
    assert f'session="{info["id"]}",value="reward/mean"' in text
