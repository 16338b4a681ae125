"""The one small interface every model service talks to its model through.

Two implementations: `TransformersEngine` (in-process, batched, CPU or CUDA) and
`OpenAIEngine` (any OpenAI-compatible server: vLLM, SGLang, a hosted API, or
another of our model services). Prompts are token ids so that rollouts are
token-exact whichever engine produced them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from shared.errors import UnavailableError
from shared.models.arrivals import Arrival
from shared.schemas.sampling import SamplingParams

# The in-process engine's decode-loop KV layouts: preallocated slots (kv_slots.py) or a growing DynamicCache.
KVCacheKind = Literal["slots", "legacy"]


@dataclass
class GenerationOutput:
    token_ids: list[int]          # generated tokens, including the eos token when the model produced it
    logprobs: list[float]         # behaviour log-probability of each generated token (unscaled logits)
    text: str                     # decoded text without special tokens, stop string removed
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int = 0
    cached_tokens: int = 0        # prompt tokens whose KV states came from the prefix cache, not a prefill
    policy_version: int = 0
    extra: dict = field(default_factory=dict)


class PromptTooLongError(ValueError):
    """The prompt leaves no room for a single new token in the model's context."""


class EngineStoppedError(UnavailableError):
    """The engine cannot generate any more (its worker stopped): 503, and the service's /ready says so."""


class Engine(ABC):
    """Generation from token-id prompts; concurrent calls may be batched by the implementation."""

    kind: str = "abstract"
    model_name: str
    tokenizer: object
    policy_version: int = 0
    weights_path: str = ""
    context_length: int = 4096

    async def start(self) -> None:
        """Load what the engine needs (called once from the service's lifespan)."""

    async def close(self) -> None:
        """Release threads, connections and memory."""

    @abstractmethod
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationOutput:
        """Sample one continuation of `prompt_ids`."""

    @abstractmethod
    async def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Per sequence, log p(token t | tokens before it) for t >= starts[i], 0.0 before: teacher-forced scoring of
        given tokens (`token_logprobs.py` in-process, `prompt_logprobs` on a remote server)."""

    @abstractmethod
    async def load_weights(self, path: str, version: int) -> None:
        """Serve the checkpoint at `path` as `version` (the caller guarantees no request is in flight)."""

    def arrival(self) -> Arrival | None:
        """A handle to announce a request the service has received and will pass to `generate` shortly, so a
        batching engine can wait for it (`shared/models/arrivals.py`); None when waiting buys nothing."""
        return None

    def stats(self) -> dict[str, float]:
        """Counters for /metrics (tokens generated, batches, ...)."""
        return {}

    def failure(self) -> str | None:
        """Why the engine can no longer generate (its `/ready` then answers 503), or None while it can."""
        return None
