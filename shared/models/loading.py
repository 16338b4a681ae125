"""Load any Hugging Face format causal LM checkpoint and its tokenizer from a local directory.

Strictly offline: `local_files_only=True`, and a path that is not a checkpoint directory fails
with an error naming it instead of being taken for a Hub id.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def default_dtype(device: str) -> torch.dtype:
    """bfloat16 on CUDA (half the memory, native speed); float32 elsewhere (CPU bf16 is slow)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def checkpoint_dir(path: str | Path) -> Path:
    """`path` as a directory holding a config, weights and tokenizer files; else a clear error."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"model path {str(directory)!r} does not exist (only local checkpoints are loaded)")
    if not directory.is_dir():
        raise ValueError(f"model path {str(directory)!r} is not a directory")
    if not (directory / "config.json").is_file():
        raise ValueError(f"model path {str(directory)!r} is not a Hugging Face checkpoint: no config.json")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"model path {str(directory)!r} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"model path {str(directory)!r} has no tokenizer files")
    return directory


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer, left-padded for batched generation, always with a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir(path), local_files_only=True, padding_side="left")
    if tokenizer.pad_token is None:  # e.g. Llama checkpoints ship none; batching needs one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode on `device`, tokenizer) from a local checkpoint directory."""
    directory = checkpoint_dir(path)
    tokenizer = load_tokenizer(directory)
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=dtype or default_dtype(device)
    )
    model.to(device)
    model.eval()
    return model, tokenizer


def resolve_model_path(model: str | None, role: str, home: Path | None = None) -> Path:
    """None -> the built-in model of `role` (built on first use); otherwise an existing local path."""
    if model is None or str(model).strip() == "":
        from shared.models.builtin import ensure_builtin_model  # building pulls in the task suite

        return ensure_builtin_model(role, home)
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist (only local checkpoints are loaded)")
    return path
