"""Student service configuration (CLI flags map onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.settings import Settings
from shared.tools.sandbox import SandboxLimits


@dataclass
class StudentConfig:
    model: str | None = None               # checkpoint dir; None = the built-in tiny student (built on first use)
    engine: Literal["transformers", "openai"] = "transformers"
    base_url: str | None = None            # OpenAI-compatible server for engine=openai, e.g. http://vllm:8000/v1
    served_model_name: str | None = None   # name in /v1/models; default from the checkpoint dir
    device: str | None = None              # "cpu" / "cuda"; default: cuda when available
    max_batch_size: int = 64               # most requests gathered into one batched generation
    max_concurrent_episodes: int = 64      # live sandboxes per service (one interpreter process each)
    weight_sync: Literal["lora", "score"] = "lora"  # how the openai engine swaps weights
    search_corpus: str | None = None       # JSONL {id,title,text}; default: the built-in knowledge base
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    settings: Settings = field(default_factory=Settings)
