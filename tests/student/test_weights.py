"""Weight reloads: a new version is served without a restart and no request mixes two versions."""

import threading
import time

import torch
from fastapi.testclient import TestClient

from shared.checkpoints import CheckpointStore
from shared.models.loading import load_causal_lm
from shared.schemas.weights import LoadWeightsRequest
from services.student.app import create_app
from tests.student.conftest import student_config


def _perturbed_checkpoint(source, target, scale):
    model, tokenizer = load_causal_lm(source)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * scale)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_load_weights_changes_generation_and_version(score_home, student_model_dir, tmp_path):
    # Paths named in requests must lie under SCORE_HOME (or SCORE_ALLOWED_PATHS).
    checkpoint = _perturbed_checkpoint(student_model_dir, score_home / "incoming" / "changes-generation", 0.5)
    named = score_home / "checkpoints" / "unit-student" / "v7"
    _perturbed_checkpoint(student_model_dir, named, 0.3)
    with TestClient(create_app(student_config(score_home))) as client:
        body = {"messages": [{"role": "user", "content": "Compute 1 + 1."}], "max_tokens": 12, "temperature": 0}
        before = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert client.get("/v1/weights").json()["policy_version"] == 0

        info = client.post("/v1/weights", json={"path": str(checkpoint)}).json()
        assert info["policy_version"] == 1 and info["path"] == str(checkpoint)
        after = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert after != before

        info = client.post("/v1/weights", json={"name": "unit-student", "version": 7}).json()
        assert info["policy_version"] == 7 and info["path"] == str(named)


def test_a_published_checkpoint_is_served_as_the_callers_policy_version(score_home, student_model_dir):
    # A run's policy versions grow across checkpoint series: v1 of a series may be served as version 6.
    store = CheckpointStore(score_home / "checkpoints")
    ref = store.publish("unit-served", lambda directory: _perturbed_checkpoint(student_model_dir, directory, 0.2))
    request = LoadWeightsRequest.serving(ref.identity(), policy_version=6)
    with TestClient(create_app(student_config(score_home))) as client:
        info = client.post("/v1/weights", json=request.model_dump(mode="json", exclude_none=True)).json()
    assert request.model_dump(exclude_none=True) == {"path": ref.path, "version": 6}  # the documented shape
    assert (ref.version, info["policy_version"], info["path"]) == (1, 6, ref.path)


def test_a_rollout_in_flight_finishes_on_the_version_it_started_with(score_home, student_model_dir, tmp_path):
    checkpoint = _perturbed_checkpoint(student_model_dir, score_home / "incoming" / "in-flight", 0.1)
    with TestClient(create_app(student_config(score_home))) as client:
        rollout = {"items": [{"task": {"id": "t", "question": "Compute 5 * 6."}}], "n": 4, "max_turns": 4,
                   "sampling": {"temperature": 1.0, "max_tokens": 64, "seed": 0}}
        results = {}

        def run_rollout():
            results["rollout"] = client.post("/v1/rollouts", json=rollout).json()

        worker = threading.Thread(target=run_rollout)
        worker.start()
        gate = client.app.state.serving.gate
        deadline = time.monotonic() + 30
        while gate.in_flight == 0 and time.monotonic() < deadline:  # wait until the rollout holds its lease
            time.sleep(0.005)
        assert gate.in_flight == 1
        swapped = client.post("/v1/weights", json={"path": str(checkpoint), "version": 5}).json()
        worker.join()
        episodes = results["rollout"]["episodes"]
        assert swapped["policy_version"] == 5
        assert results["rollout"]["policy_version"] == 0
        assert {e["policy_version"] for e in episodes} == {0}
        later = client.post("/v1/rollouts", json={**rollout, "max_turns": 1}).json()
        assert later["policy_version"] == 5
