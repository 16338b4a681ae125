"""OpenAI-compatible chat and completion wire formats (the subset vLLM's server speaks)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.schemas.agent import MAX_TOKEN_ID
from shared.schemas.sampling import MAX_SEED


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who speaks.", examples=["user"])
    content: str = Field(
        description="What is said (plain text).",
        examples=["Take the number 747, then add 822, then subtract 580. What number do you get?"],
    )


class OpenAISampling(BaseModel):
    """The sampling fields chat and completion requests share, with OpenAI's names and defaults."""

    model: str | None = Field(
        default=None, description="Model name from /v1/models; optional, one model is served.",
        examples=["score-student"],
    )
    temperature: float = Field(
        default=1.0, ge=0.0, le=10.0, description="Sampling temperature; 0 (or anything below 1e-6) is greedy.", examples=[0.8],
    )
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.", examples=[0.95])
    n: int = Field(default=1, ge=1, le=64, description="Choices to sample.", examples=[1])
    stop: str | list[str] | None = Field(
        default=None, description="Stop strings (not included in the output).", examples=[["</code>"]],
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Seed for reproducible sampling (0 to 2^63-1); choice i uses "
        "seed + i.", examples=[7],
    )


class ChatCompletionRequest(OpenAISampling):
    """`POST /v1/chat/completions` request (unknown OpenAI fields are accepted and ignored)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{
        "model": "score-student",
        "messages": [{"role": "user", "content": "Take the number 747, then add 822, then subtract 580. "
                      "What number do you get?"}],
        "max_tokens": 64, "temperature": 0.8, "n": 1, "seed": 7, "logprobs": True,
    }]})

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_tokens: int | None = Field(
        default=None, ge=1, le=32768, description="Most new tokens (default 256).", examples=[64],
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, le=32768, description="Alias of max_tokens.", examples=[64],
    )
    stream: bool = Field(default=False, description="Streaming is not supported; must be false.", examples=[False])
    logprobs: bool = Field(
        default=False, description="Return the log-probability of each generated token.", examples=[True],
    )

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool) -> bool:
        if value:
            raise ValueError("stream=true is not supported by this server")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Tokens in the prompt.", examples=[41])
    completion_tokens: int = Field(description="Tokens generated, over all choices.", examples=[23])
    total_tokens: int = Field(description="prompt_tokens + completion_tokens.", examples=[64])


class TokenLogprob(BaseModel):
    token: str = Field(description="The generated token, decoded.", examples=["<thought>"])
    logprob: float = Field(
        description="Its log-probability under the served policy (unscaled logits).", examples=[-0.21],
    )


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] = Field(description="One entry per generated token, in order.")


class ChatChoice(BaseModel):
    index: int = Field(description="Position of this choice among the `n` sampled.", examples=[0])
    message: ChatMessage = Field(description="The assistant's reply.")
    finish_reason: Literal["stop", "length"] = Field(
        description="`stop`: end of turn or a stop string; `length`: max_tokens or the context was reached.",
        examples=["stop"],
    )
    logprobs: ChoiceLogprobs | None = Field(default=None, description="Per-token log-probabilities, when asked for.")


class ChatCompletionResponse(BaseModel):
    id: str = Field(
        default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}", description="Unique id of this completion.",
        examples=["chatcmpl-5f0c9e1a7b3d4c2e8f6a1b0c9d8e7f6a"],
    )
    object: Literal["chat.completion"] = Field(default="chat.completion", description="Always `chat.completion`.")
    created: int = Field(
        default_factory=lambda: int(time.time()), description="Unix time of creation.", examples=[1717171717],
    )
    model: str = Field(description="The served model that answered.", examples=["score-student"])
    choices: list[ChatChoice] = Field(description="The `n` sampled replies.")
    usage: Usage = Field(description="Token counts.")


class CompletionRequest(OpenAISampling):
    """`POST /v1/completions` with a token-id prompt, as vLLM accepts it (used by the remote engine)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{
        "model": "score-student", "prompt": [12, 87, 301, 45], "max_tokens": 64, "temperature": 0.8,
        "stop": ["</code>"], "seed": 7, "logprobs": 1, "return_tokens_as_token_ids": True,
    }]})

    prompt: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]] | str = Field(
        description="Prompt as token ids (or text).", examples=[[12, 87, 301, 45]],
    )
    max_tokens: int = Field(default=16, ge=1, le=32768, description="Most new tokens.", examples=[64])
    logprobs: int | None = Field(
        default=None, ge=0, le=1, description="1 returns the sampled token's logprob.", examples=[1],
    )
    return_tokens_as_token_ids: bool = Field(
        default=False, description="vLLM extension: tokens as `token_id:N`.", examples=[True],
    )
    prompt_logprobs: int | None = Field(
        default=None, ge=0, le=0,
        description="vLLM extension: 0 returns each prompt token's own log-probability given the tokens before it "
        "(`choices[i].prompt_logprobs`; the first is null). Top alternatives are not offered here.", examples=[0],
    )
    skip_special_tokens: bool = Field(
        default=True, description="Drop special tokens from the returned text.", examples=[False],
    )

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: list[int] | str) -> list[int] | str:
        if len(value) == 0:
            raise ValueError("prompt must not be empty")
        return value


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(
        description="Generated tokens, decoded (or `token_id:N` with return_tokens_as_token_ids).",
        examples=[["token_id:301", "token_id:45"]],
    )
    token_logprobs: list[float] = Field(
        description="Log-probability of each generated token.", examples=[[-0.21, -1.37]],
    )


class PromptLogprob(BaseModel):
    logprob: float = Field(description="Log-probability of the prompt token given the tokens before it.",
                           examples=[-0.42])
    rank: int | None = Field(default=None, description="Its rank in the vocabulary (vLLM); null when not computed.",
                             examples=[1])
    decoded_token: str | None = Field(default=None, description="The token, decoded.", examples=["add"])


class CompletionChoice(BaseModel):
    index: int = Field(description="Position of this choice among the `n` sampled.", examples=[0])
    text: str = Field(description="The generated text.", examples=["<thought>Start from 747: add 822.</thought>"])
    finish_reason: Literal["stop", "length"] = Field(
        description="`stop`: end of turn or a stop string; `length`: max_tokens or the context was reached.",
        examples=["length"],
    )
    logprobs: CompletionLogprobs | None = Field(default=None, description="Per-token log-probabilities, when asked for.")
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        default=None,
        description="With `prompt_logprobs`: per prompt position, the prompt token's id (as a string) -> its "
        "log-probability, as vLLM returns it; null at position 0.",
        examples=[[None, {"87": {"logprob": -3.1, "rank": None, "decoded_token": "add"}}]],
    )


class CompletionResponse(BaseModel):
    id: str = Field(
        default_factory=lambda: f"cmpl-{uuid.uuid4().hex}", description="Unique id of this completion.",
        examples=["cmpl-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"],
    )
    object: Literal["text_completion"] = Field(default="text_completion", description="Always `text_completion`.")
    created: int = Field(
        default_factory=lambda: int(time.time()), description="Unix time of creation.", examples=[1717171717],
    )
    model: str = Field(description="The served model that answered.", examples=["score-student"])
    choices: list[CompletionChoice] = Field(description="The `n` sampled continuations.")
    usage: Usage = Field(description="Token counts.")


class ModelCard(BaseModel):
    id: str = Field(description="The model name to pass as `model`.", examples=["score-student"])
    object: Literal["model"] = Field(default="model", description="Always `model`.")
    created: int = Field(
        default_factory=lambda: int(time.time()), description="Unix time the model was loaded.", examples=[1717171000],
    )
    owned_by: str = Field(default="score", description="Who serves it.", examples=["score"])
    root: str | None = Field(
        default=None, description="Checkpoint directory the weights came from.",
        examples=["/data/score/checkpoints/student-sft/v2"],
    )


class ModelList(BaseModel):
    object: Literal["list"] = Field(default="list", description="Always `list`.")
    data: list[ModelCard] = Field(description="The served models (one per service).")
