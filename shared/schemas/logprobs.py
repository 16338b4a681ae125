"""`POST /v1/logprobs` on the teacher: its log-probabilities of the student's own tokens (on-policy distillation).

Token-level distillation compares two distributions over one vocabulary, so the request names the tokenizer the
token ids come from and the teacher refuses (422 naming both) when it is not its own.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.schemas.agent import MAX_TOKEN_ID
from shared.schemas.teacher import Cost

MAX_LOGPROB_SEQUENCES = 1024
MAX_SEQUENCE_TOKENS = 32768


class TokenizerInfo(BaseModel):
    """Which tokenizer produced a set of token ids: two with the same fingerprint map every id to the same token."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=512, description="Where the tokenizer was loaded from (a label; not compared).",
                      examples=["/data/score/models/builtin/tokenizer"])
    vocab_size: int = Field(ge=0, le=MAX_TOKEN_ID + 1, description="Tokens in the vocabulary, added tokens included.",
                            examples=[4096])
    fingerprint: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the vocabulary (every token and its id, added and special tokens included): what "
        "two tokenizers must share for their token ids to mean the same.",
        examples=["5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592"],
    )


class LogprobSequence(BaseModel):
    """One token sequence (a student episode) and which of its tokens to score."""

    model_config = ConfigDict(extra="forbid")

    token_ids: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] = Field(
        min_length=2, max_length=MAX_SEQUENCE_TOKENS,
        description="The whole sequence: prompt, the student's turns and the observations, as the student's "
        "`POST /v1/rollouts` returns it.", examples=[[12, 87, 301, 45, 9, 220]],
    )
    score_mask: list[Annotated[int, Field(ge=0, le=1)]] = Field(
        description="Per token: 1 = score it (a token the student wrote: its `loss_mask`), 0 = context only. Same "
        "length as token_ids; the first token cannot be scored (nothing precedes it).", examples=[[0, 0, 1, 1, 0, 1]],
    )

    @field_validator("score_mask")
    @classmethod
    def _aligned(cls, value: list[int], info: ValidationInfo) -> list[int]:
        ids = info.data.get("token_ids")
        if ids is not None and len(value) != len(ids):
            raise ValueError(f"score_mask has {len(value)} entries but token_ids has {len(ids)}; they must align")
        if value and value[0] == 1:
            raise ValueError("score_mask[0] must be 0: the first token has no context to be scored from")
        return value


class LogprobRequest(BaseModel):
    """Score given token sequences with the teacher model."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "sequences": [{"token_ids": [12, 87, 301, 45, 9, 220], "score_mask": [0, 0, 1, 1, 0, 1]}],
    }]})

    sequences: list[LogprobSequence] = Field(
        min_length=1, max_length=MAX_LOGPROB_SEQUENCES,
        description="Sequences to score; the teacher batches them (length-sorted, bounded by the size of their logits).",
    )
    tokenizer: TokenizerInfo | None = Field(
        default=None,
        description="The tokenizer the token ids come from (the student's, from its `GET /v1/weights`). When given and "
        "its fingerprint differs from the teacher's, the request is refused with 422 naming both: token-level "
        "distillation needs one vocabulary. Omitted: the ids are taken to be the teacher's own.",
    )


class ScoredSequence(BaseModel):
    logprobs: list[float] = Field(
        description="Per token: the teacher's log p(token | tokens before it) where score_mask is 1, 0.0 elsewhere "
        "(log-softmax of the unscaled logits, as the student's behaviour log-probabilities).",
        examples=[[0.0, 0.0, -0.05, -0.4, 0.0, -0.01]],
    )
    scored_tokens: int = Field(description="Tokens scored (ones in score_mask).", examples=[3])


class LogprobResponse(BaseModel):
    sequences: list[ScoredSequence] = Field(description="One per request sequence, in order.")
    tokenizer: TokenizerInfo = Field(description="The teacher's tokenizer.")
    model: str = Field(description="The teacher model that scored them.", examples=["builtin:teacher-sft"])
    cost: Cost = Field(
        description="What scoring cost the teacher: `teacher_prompt_tokens` counts every token read (each sequence up "
        "to its last scored token), `teacher_calls` the sequences; nothing is written.",
    )
