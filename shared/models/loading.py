"""Load any Hugging Face format causal LM checkpoint and its tokenizer from a local directory.

Two kinds of checkpoint directory are accepted:
- a full checkpoint: config.json, weights, tokenizer files;
- a PEFT LoRA adapter: adapter_config.json, adapter weights, tokenizer files. Its base is
  `base_model_name_or_path` in adapter_config.json, which must be a local full checkpoint (the trainer
  writes the absolute path of the base it trained on, and keeps it through adapter-from-adapter chains, so
  every version of a series names the model vLLM serves).

`load_causal_lm` is for inference: an adapter is merged into its base, so every user of a model (student
engine, teacher, evaluation, the GRPO reference) works the same on both kinds. `load_trainable_causal_lm`
is for training: it keeps or creates the adapter as a trainable PEFT model.

Strictly offline: `local_files_only=True`, and a path that is not a checkpoint directory fails
with an error naming it instead of being taken for a Hub id.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shared.schemas.lora import LoRASettings

log = logging.getLogger("score.models")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
BASE_FIELD = "base_model_name_or_path"


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on CUDA (half the memory, native speed); float32 elsewhere (CPU bf16 is slow)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` is a PEFT adapter checkpoint (it has adapter_config.json)."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def checkpoint_dir(path: str | Path) -> Path:
    """`path` as a loadable directory: a full checkpoint, or an adapter whose base is one; else a clear error."""
    directory = _existing_dir(path)
    if is_adapter_dir(directory):
        _require_any(directory, ADAPTER_WEIGHT_FILES, "adapter weights")
        _require_any(directory, TOKENIZER_FILES, "tokenizer files")
        adapter_base(directory)
        return directory
    return full_checkpoint_dir(directory)


def full_checkpoint_dir(path: str | Path) -> Path:
    """`path` as a directory holding a config, weights and tokenizer files (not an adapter); else a clear error."""
    directory = _existing_dir(path)
    if not (directory / "config.json").is_file():
        raise ValueError(f"model path {str(directory)!r} is not a Hugging Face checkpoint: no config.json")
    _require_any(directory, WEIGHT_FILES, "weights")
    _require_any(directory, TOKENIZER_FILES, "tokenizer files")
    return directory


def adapter_base(path: str | Path) -> Path:
    """The full checkpoint an adapter was trained on (`base_model_name_or_path`), checked to be local."""
    config_file = Path(path).expanduser() / ADAPTER_CONFIG
    try:
        base = json.loads(config_file.read_text()).get(BASE_FIELD)
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"adapter config {str(config_file)!r} is not readable JSON: {exc}") from exc
    if not isinstance(base, str) or not base.strip():
        raise ValueError(
            f"adapter config {str(config_file)!r} has no `{BASE_FIELD}`: it must name the local directory of the "
            "base checkpoint the adapter was trained on"
        )
    base_dir = Path(base).expanduser()
    if is_adapter_dir(base_dir):
        raise ValueError(
            f"`{BASE_FIELD}` in {str(config_file)!r} is {base!r}, itself an adapter; it must be the full base "
            "checkpoint (adapters continued from adapters keep their original base)"
        )
    try:
        return full_checkpoint_dir(base_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(
            f"`{BASE_FIELD}` in {str(config_file)!r} is {base!r}, which is not a local base checkpoint "
            f"directory ({exc}); adapters load only on a local copy of their base"
        ) from exc


def _existing_dir(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"model path {str(directory)!r} does not exist (only local checkpoints are loaded)")
    if not directory.is_dir():
        raise ValueError(f"model path {str(directory)!r} is not a directory")
    return directory


def _require_any(directory: Path, names: tuple[str, ...], what: str) -> None:
    if not any((directory / name).is_file() for name in names):
        raise ValueError(f"model path {str(directory)!r} has no {what} (expected one of {', '.join(names)})")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, left-padded for batched generation, always with a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir(path), local_files_only=True, padding_side="left")
    if tokenizer.pad_token is None:  # e.g. Llama checkpoints ship none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode on `device`, tokenizer) from a local checkpoint directory; adapters come merged."""
    directory = checkpoint_dir(path)
    tokenizer = load_tokenizer(directory)
    model = _merged_model(directory, dtype or default_dtype(device))
    model.to(device)
    model.eval()
    return model, tokenizer


def load_trainable_causal_lm(
    path: str | Path, settings: LoRASettings, *, device: str | torch.device = "cpu", seed: int = 0
):
    """The model to train from a checkpoint, in fp32 on `device` (eval mode; the caller switches to train).

    adapter checkpoint, lora on   -> the adapter continued (PeftModel, only its tensors trainable)
    adapter checkpoint, lora off  -> base + adapter merged, every weight trainable
    full checkpoint,    lora on   -> a new adapter from `settings`, its initialisation seeded by `seed`
    full checkpoint,    lora off  -> the plain model, every weight trainable
    fp32 master weights everywhere: AdamW on bf16 weights loses small updates.
    """
    directory = checkpoint_dir(path)
    if is_adapter_dir(directory):
        model = _continued_adapter(directory, settings) if settings.lora else _merged_model(directory, torch.float32)
    else:
        model = _plain_model(directory, torch.float32)
        if settings.lora:
            model = _new_adapter(model, directory, settings, seed)
    if not settings.lora:
        model.requires_grad_(True)  # merging leaves the base frozen as PEFT wrapped it
    return model.to(device).eval()


def _plain_model(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)


def _merged_model(directory: Path, dtype: torch.dtype) -> PreTrainedModel:
    if not is_adapter_dir(directory):
        return _plain_model(directory, dtype)
    from peft import PeftModel

    base = _plain_model(adapter_base(directory), dtype)
    return PeftModel.from_pretrained(base, directory).merge_and_unload()


def _continued_adapter(directory: Path, settings: LoRASettings):
    from peft import PeftModel

    base_dir = adapter_base(directory)
    model = PeftModel.from_pretrained(_plain_model(base_dir, torch.float32), directory, is_trainable=True)
    _warn_on_ignored_settings(directory, model.peft_config["default"], settings)
    # vLLM serves the original base: every adapter of a chain must name it, not the adapter it continued.
    model.peft_config["default"].base_model_name_or_path = str(base_dir.absolute())
    return model


def _new_adapter(model: PreTrainedModel, directory: Path, settings: LoRASettings, seed: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=list(settings.lora_target_modules), task_type="CAUSAL_LM",
    )
    # A pure function of the seed (a restarted session or job rebuilds the same adapter), without moving
    # the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    # Absolute, so the adapter finds its base from any working directory (vLLM and our loaders read it).
    peft_model.peft_config["default"].base_model_name_or_path = str(directory.absolute())
    return peft_model


def _warn_on_ignored_settings(directory: Path, config, settings: LoRASettings) -> None:
    """A continued adapter keeps its own shape; say so when the request asked for another one."""
    ignored = {
        name: (getattr(settings, f"lora_{name}"), value)
        for name, value in (("r", config.r), ("alpha", config.lora_alpha), ("dropout", config.lora_dropout))
        if getattr(settings, f"lora_{name}") != value
    }
    if set(settings.lora_target_modules) != set(config.target_modules or ()):
        ignored["target_modules"] = (sorted(settings.lora_target_modules), sorted(config.target_modules or ()))
    if ignored:
        log.warning("continuing adapter %s with its own settings; ignored (asked, kept): %s", directory, ignored)
