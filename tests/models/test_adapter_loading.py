"""LoRA adapter checkpoints: loaded merged for inference, kept trainable for training, refused where they cannot go.

The adapters here are real PEFT adapters on the built-in student, with non-zero weights, so a merged load that
dropped the adapter would show in the logits.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from services.student.app import create_app
from shared.checkpoints import resolve_model
from shared.models.loading import (
    checkpoint_dir, is_adapter_dir, load_causal_lm, load_tokenizer, load_trainable_causal_lm,
)
from shared.models.openai_engine import OpenAIEngine, refuse_full_checkpoint
from shared.schemas.rl import GRPOHyperparameters
from shared.settings import Settings
from tests.student.conftest import student_config

IDS = torch.tensor([[5, 17, 230, 41, 9, 1200, 88, 3]])


def _base(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def adapter(student_model_dir, tmp_path_factory):
    """(adapter directory, the PEFT model it was saved from): q/v adapters with random non-zero B matrices."""
    torch.manual_seed(7)
    peft_model = get_peft_model(_base(student_model_dir), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
    ))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    directory = tmp_path_factory.mktemp("adapters") / "unit-adapter"
    peft_model.save_pretrained(directory)
    load_tokenizer(student_model_dir).save_pretrained(directory)
    return directory, peft_model.eval()


def _copy_with_config(adapter_dir: Path, target: Path, **changes) -> Path:
    shutil.copytree(adapter_dir, target)
    config = json.loads((target / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (target / "adapter_config.json").write_text(json.dumps(config))
    return target


# --- inference --------------------------------------------------------------------------------------------


def test_an_adapter_loads_merged_with_the_logits_of_base_plus_adapter(adapter, student_model_dir):
    directory, peft_model = adapter
    assert is_adapter_dir(directory) and not (directory / "config.json").exists()
    assert json.loads((directory / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        student_model_dir)
    model, tokenizer = load_causal_lm(directory)
    assert not isinstance(model, PeftModel) and not any("lora" in name for name in model.state_dict())
    torch.testing.assert_close(_logits(model), _logits(peft_model), rtol=1e-5, atol=1e-5)
    assert (_logits(model) - _logits(_base(student_model_dir))).abs().max() > 1e-2  # the adapter is in there
    assert tokenizer.get_vocab() == load_tokenizer(student_model_dir).get_vocab()


def test_adapter_directories_count_as_checkpoints_by_path(adapter, score_home):
    directory, _ = adapter
    assert checkpoint_dir(directory) == directory
    assert resolve_model(str(directory), home=score_home) == (directory, str(directory))


@pytest.mark.parametrize(
    "changes, text",
    [
        ({"base_model_name_or_path": None}, "has no `base_model_name_or_path`"),
        ({"base_model_name_or_path": ""}, "has no `base_model_name_or_path`"),
        ({"base_model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"}, "'Qwen/Qwen2.5-1.5B-Instruct', which is not a "
                                                                     "local base checkpoint directory"),
        ({"base_model_name_or_path": "/nonexistent/base"}, "does not exist"),
    ],
)
def test_a_broken_adapter_config_names_the_file_and_the_field(adapter, tmp_path, changes, text):
    broken = _copy_with_config(adapter[0], tmp_path / "broken", **changes)
    for load in (checkpoint_dir, load_causal_lm):
        with pytest.raises(ValueError) as caught:
            load(broken)
        message = str(caught.value)
        assert text in message and str(broken / "adapter_config.json") in message


def test_an_adapter_on_an_adapter_and_missing_files_are_refused(adapter, tmp_path):
    directory, _ = adapter
    stacked = _copy_with_config(directory, tmp_path / "stacked", base_model_name_or_path=str(directory))
    with pytest.raises(ValueError, match="itself an adapter; it must be the full base checkpoint"):
        load_causal_lm(stacked)
    no_weights = shutil.copytree(directory, tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="has no adapter weights"):
        checkpoint_dir(no_weights)
    garbled = shutil.copytree(directory, tmp_path / "garbled")
    (garbled / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not readable JSON"):
        checkpoint_dir(garbled)


# --- training ---------------------------------------------------------------------------------------------


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_an_adapter_with_lora_on_is_continued_on_its_original_base(adapter, student_model_dir):
    directory, peft_model = adapter
    # The request's shape differs from the adapter's: the adapter keeps its own (rank 4, q and v).
    model = load_trainable_causal_lm(directory, GRPOHyperparameters(lora=True, lora_r=8))
    assert isinstance(model, PeftModel)
    trainable = _trainable(model)
    assert trainable and all("lora_" in name for name in trainable)
    assert {p.shape[0] for name, p in trainable.items() if "lora_A" in name} == {4}
    assert model.peft_config["default"].base_model_name_or_path == str(student_model_dir.absolute())
    torch.testing.assert_close(_logits(model), _logits(peft_model), rtol=1e-5, atol=1e-5)
    assert int(model.config.vocab_size) == int(peft_model.config.vocab_size)  # PeftModel forwards `.config`


def test_an_adapter_with_lora_off_trains_every_weight_of_the_merged_model(adapter):
    directory, peft_model = adapter
    model = load_trainable_causal_lm(directory, GRPOHyperparameters(lora=False))
    assert not isinstance(model, PeftModel)
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(_logits(model), _logits(peft_model), rtol=1e-5, atol=1e-5)


def test_a_full_checkpoint_gets_a_new_seeded_adapter_or_trains_as_is(student_model_dir):
    settings = GRPOHyperparameters(lora=True, lora_r=2, lora_alpha=4, lora_target_modules=["q_proj"])
    first, again = (load_trainable_causal_lm(student_model_dir, settings, seed=3) for _ in range(2))
    other = load_trainable_causal_lm(student_model_dir, settings, seed=4)
    assert isinstance(first, PeftModel)
    ours, theirs, others = _trainable(first), _trainable(again), _trainable(other)
    assert ours.keys() == theirs.keys() and all("q_proj.lora_" in name for name in ours)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert any(not torch.equal(ours[name], others[name]) for name in ours)
    assert first.peft_config["default"].base_model_name_or_path == str(student_model_dir.absolute())
    plain = load_trainable_causal_lm(student_model_dir, GRPOHyperparameters())
    assert not isinstance(plain, PeftModel) and all(p.requires_grad for p in plain.parameters())


# --- model services ---------------------------------------------------------------------------------------


def test_the_student_service_loads_an_adapter_through_post_weights(adapter, score_home, student_model_dir):
    directory, peft_model = adapter
    # The adapter lies outside SCORE_HOME: the operator's allow-list lets the service load it.
    settings = Settings(home=score_home, allowed_paths=[directory.parent])
    with TestClient(create_app(student_config(score_home, settings=settings))) as client:
        info = client.post("/v1/weights", json={"path": str(directory), "version": 4})
        assert info.status_code == 200, info.text
        assert info.json()["policy_version"] == 4 and info.json()["path"] == str(directory)
        served = client.app.state.serving.engine.model
        torch.testing.assert_close(_logits(served), _logits(peft_model), rtol=1e-5, atol=1e-5)
        body = {"messages": [{"role": "user", "content": "Compute 1 + 1."}], "max_tokens": 8, "temperature": 0}
        assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_the_student_service_refuses_a_broken_adapter_naming_the_field(adapter, score_home, tmp_path):
    broken = _copy_with_config(adapter[0], tmp_path / "broken", base_model_name_or_path="/nonexistent/base")
    settings = Settings(home=score_home, allowed_paths=[tmp_path])
    with TestClient(create_app(student_config(score_home, settings=settings))) as client:
        response = client.post("/v1/weights", json={"path": str(broken)})
        assert response.status_code == 422, response.text
        assert "base_model_name_or_path" in response.json()["error"]["message"]
        assert client.get("/v1/weights").json()["policy_version"] == 0


def test_lora_sync_refuses_a_local_full_checkpoint_before_any_request(student_model_dir):
    # Nothing listens on this address: a request would fail with a connection error, not this refusal.
    engine = OpenAIEngine("http://127.0.0.1:9/v1", tokenizer=load_tokenizer(student_model_dir), model_name="base",
                          weight_sync="lora", timeout_s=2.0)
    with pytest.raises(ValueError) as caught:
        asyncio.run(engine.load_weights(str(student_model_dir), 1))
    message = str(caught.value)
    assert "vLLM loads only LoRA adapters at run time" in message
    assert "`hyperparameters.lora: true`" in message and "`merge_lora: false`" in message
    assert engine.policy_version == 0 and engine.model_name == "base"


def test_lora_sync_posts_adapters_and_paths_it_cannot_see(adapter):
    directory, _ = adapter
    refuse_full_checkpoint(str(directory))  # an adapter goes through
    posted = []

    def vllm(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(200, text="Success")

    async def load_both(engine: OpenAIEngine) -> None:
        await engine.close()  # its own client is replaced by one whose transport plays vLLM
        engine._client = httpx.AsyncClient(base_url="http://vllm/v1", transport=httpx.MockTransport(vllm))
        await engine.load_weights(str(directory), 1)
        await engine.load_weights("/only/on/the/vllm/host/v2", 2)  # not visible here: vLLM judges it
        await engine.close()

    engine = OpenAIEngine("http://vllm/v1", tokenizer=None, model_name="base", weight_sync="lora")
    asyncio.run(load_both(engine))
    assert posted == [{"lora_name": "policy-v1", "lora_path": str(directory)},
                      {"lora_name": "policy-v2", "lora_path": "/only/on/the/vllm/host/v2"}]
    assert (engine.model_name, engine.policy_version) == ("policy-v2", 2)


def test_a_student_on_vllm_answers_422_for_a_full_checkpoint(score_home, student_model_dir):
    # The openai engine with a served model name makes no request at start; nothing listens at the base URL.
    config = student_config(score_home, engine="openai", base_url="http://127.0.0.1:9/v1",
                            served_model_name="base", model=str(student_model_dir), weight_sync="lora")
    with TestClient(create_app(config)) as client:
        response = client.post("/v1/weights", json={"path": str(student_model_dir), "version": 1})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "body.path" and "`hyperparameters.lora: true`" in error["message"]
        assert client.get("/v1/weights").json()["policy_version"] == 0
