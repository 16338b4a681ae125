"""LoRA adapters through the trainer: SFT jobs publish and continue adapters, GRPO sessions train and publish
adapters (never merged) and keep every adapter of a chain on the original base model, the one vLLM serves.
The exact resume of an adapter session after a restart is tested with the full-weight one (test_grpo_api.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from shared.models.loading import load_causal_lm
from tests.trainer.sft_jobs import gold_lines, make_job_dir, progress
from tests.trainer.rl_sessions import batch, create, trainer_app

LORA = {"lora": True, "lora_r": 4, "lora_alpha": 8}
TARGETS = ["q_proj", "v_proj"]
IDS = torch.tensor([[5, 17, 230, 41, 9, 1200, 88, 3]])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _adapter(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, adapter tensors) of a published adapter directory, checked to be only an adapter."""
    directory = Path(path)
    assert (directory / "adapter_config.json").is_file() and (directory / "tokenizer.json").is_file()
    assert not (directory / "model.safetensors").exists() and not (directory / "config.json").exists()
    tensors = load_file(directory / "adapter_model.safetensors")
    assert tensors and all(".lora_A." in name or ".lora_B." in name for name in tensors)
    return json.loads((directory / "adapter_config.json").read_text()), tensors


def _logits(path) -> torch.Tensor:
    model, _ = load_causal_lm(path)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert before.keys() == after.keys()
    return [name for name in before if not torch.equal(before[name], after[name])]


# --- SFT jobs ---------------------------------------------------------------------------------------------


def _run_sft(job_dir: Path, home: Path) -> dict:
    env = {**os.environ, "SCORE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "services.trainer.sft.train", "--job-dir", str(job_dir)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return progress(job_dir, "published")[0]["checkpoint"]


@pytest.mark.slow
def test_sft_publishes_an_adapter_and_a_second_job_continues_it(student_model_dir, score_home, tmp_path):
    base_file = student_model_dir / "model.safetensors"
    base_hash = _sha256(base_file)
    hyperparameters = dict(max_steps=3, learning_rate=1e-2, micro_batch_tokens=1024, max_seq_length=1024,
                           warmup_ratio=0.0, cpu_threads=1, device="cpu", merge_lora=False,
                           lora_target_modules=TARGETS, **LORA)
    lines = gold_lines(12)
    first = _run_sft(make_job_dir(tmp_path / "sft-adapter", base_path=student_model_dir, home=score_home,
                                  lines=lines, **hyperparameters), score_home)
    first_config, first_tensors = _adapter(first["path"])
    assert first_config["base_model_name_or_path"] == str(student_model_dir)
    assert first_config["r"] == 4 and sorted(first_config["target_modules"]) == TARGETS

    # The second job starts from the adapter (asking for another rank, which a continued adapter ignores).
    second = _run_sft(make_job_dir(tmp_path / "sft-continued", base_path=Path(first["path"]), home=score_home,
                                   lines=lines, **{**hyperparameters, "lora_r": 8}), score_home)
    second_config, second_tensors = _adapter(second["path"])
    assert second_config["base_model_name_or_path"] == str(student_model_dir)  # the original base, not `first`
    assert second_config["r"] == 4
    assert _changed(first_tensors, second_tensors)  # the adapter trained on
    assert _sha256(base_file) == base_hash  # the base stayed frozen

    merged_first, _ = load_causal_lm(first["path"])
    merged_second, _ = load_causal_lm(second["path"])
    changed = _changed(merged_first.state_dict(), merged_second.state_dict())
    assert changed and all(".q_proj." in name or ".v_proj." in name for name in changed)


# --- GRPO sessions ----------------------------------------------------------------------------------------


def _lora_session(client, **body) -> dict:
    # The batches' behaviour logprobs are made up, so the trust bound on them is off.
    hyperparameters = {"learning_rate": 1e-2, "lora_target_modules": TARGETS, "max_logprob_diff": None, **LORA,
                       **body.pop("hyperparameters", {})}
    return create(client, hyperparameters=hyperparameters, **body)


def _step(client, session_id: str, body: dict) -> dict:
    response = client.post(f"/v1/rl/sessions/{session_id}/steps", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_lora_session_publishes_adapter_versions_on_the_base(score_home, student_model_dir):
    base_hash = _sha256(student_model_dir / "model.safetensors")
    with TestClient(trainer_app(score_home)) as client:
        info = _lora_session(client)
        assert info["hyperparameters"]["lora"] is True
        first = _step(client, info["id"], batch(version=0))
        second = _step(client, info["id"], batch(version=1, rewards=((0.0, 1.0, 1.0), (1.0, 0.0))))
        state = torch.load(score_home / "trainer" / "rl" / info["id"] / "optimizer.pt", weights_only=True)
    assert [first["checkpoint"]["version"], second["checkpoint"]["version"]] == [1, 2]
    config_1, tensors_1 = _adapter(first["checkpoint"]["path"])
    config_2, tensors_2 = _adapter(second["checkpoint"]["path"])
    assert config_1["base_model_name_or_path"] == config_2["base_model_name_or_path"] == str(student_model_dir)
    assert _changed(tensors_1, tensors_2)
    assert len(state["optimizer"]["state"]) == len(tensors_2)  # AdamW holds the adapter's tensors only
    assert _sha256(student_model_dir / "model.safetensors") == base_hash
    assert (_logits(second["checkpoint"]["path"]) - _logits(student_model_dir)).abs().max() > 1e-4
    assert (_logits(second["checkpoint"]["path"]) - _logits(first["checkpoint"]["path"])).abs().max() > 1e-6


def test_a_session_on_an_adapter_continues_it_against_its_merged_reference(score_home, student_model_dir):
    with TestClient(trainer_app(score_home)) as client:
        source = _step(client, _lora_session(client)["id"], batch(version=0))["checkpoint"]["path"]
        _, source_tensors = _adapter(source)
        # beta > 0: the KL reference is the session's base, the adapter merged. The first step's KL is taken
        # before the update, where the policy is that same model, so it is zero; a plain base would not be.
        info = _lora_session(client, base=source, hyperparameters={"beta": 0.1})
        step = _step(client, info["id"], batch(version=0))
        assert step["metrics"]["kl"] == pytest.approx(0.0, abs=1e-6)
        config, tensors = _adapter(step["checkpoint"]["path"])
        assert config["base_model_name_or_path"] == str(student_model_dir)
        assert _changed(source_tensors, tensors)

        # lora off on an adapter base: the merged model trains whole and publishes full weights.
        full = create(client, base=source, hyperparameters={"learning_rate": 1e-3})
        path = Path(_step(client, full["id"], batch(version=0))["checkpoint"]["path"])
        assert (path / "model.safetensors").is_file() and not (path / "adapter_config.json").exists()


def test_a_session_on_a_broken_adapter_is_422_naming_the_field(score_home, tmp_path):
    with TestClient(trainer_app(score_home)) as client:
        source = Path(_step(client, _lora_session(client)["id"], batch(version=0))["checkpoint"]["path"])
        broken = Path(tempfile.mkdtemp(prefix="broken-adapter-", dir=score_home))  # requests name SCORE_HOME paths

        for item in source.iterdir():
            (broken / item.name).write_bytes(item.read_bytes())
        config = json.loads((broken / "adapter_config.json").read_text())
        (broken / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "Qwen/Qwen2.5"}))
        response = client.post("/v1/rl/sessions", json={"base": str(broken), "hyperparameters": LORA})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "body.base" and "base_model_name_or_path" in error["message"]
