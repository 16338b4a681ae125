"""Sampling parameters shared by chat completions and rollouts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Seeds are signed 64-bit integers on every engine (torch generators, vLLM); an offset seed wraps inside this.
MAX_SEED = 2**63 - 1


def offset_seed(seed: int | None, offset: int) -> int | None:
    """`seed + offset`, kept within 0..MAX_SEED (choice i of a request samples with seed + i)."""
    return None if seed is None else (seed + offset) % (MAX_SEED + 1)


class SamplingParams(BaseModel):
    """How to sample one model turn. Defaults follow vLLM's."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0, le=10.0, description="0 (or anything below 1e-6) means greedy decoding.", examples=[0.8])
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.", examples=[0.95])
    max_tokens: int = Field(default=256, ge=1, le=32768, description="Most new tokens per model turn.", examples=[64])
    stop: list[str] = Field(
        default_factory=list, max_length=16, description="Strings that end a turn (not included).",
        examples=[["</code>"]],
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Per-request seed for reproducible "
                             "sampling (0 to 2^63-1).", examples=[7])
