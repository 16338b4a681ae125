"""Generation through any OpenAI-compatible server (vLLM, SGLang, a hosted API, another model service).

Rollouts need token-exact data, so prompts go to `/v1/completions` as token ids
with `logprobs=1` and vLLM's `return_tokens_as_token_ids`; the tokenizer used to
build prompts is loaded locally from the same checkpoint the server serves.
Weights are swapped on vLLM by loading a LoRA adapter per version
(`/v1/load_lora_adapter`) and addressing it by name, or, for our own student
service, through `POST /v1/weights`. vLLM takes adapters only at run time: a
full checkpoint visible here is refused with what to set instead.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from shared.models.engine import Engine, GenerationOutput
from shared.models.loading import is_adapter_dir
from shared.observability import traced_async_client
from shared.schemas.openai import CompletionResponse
from shared.schemas.sampling import SamplingParams

log = logging.getLogger("score.engine")
_TOKEN_ID_PREFIX = "token_id:"


class RemoteEngineError(RuntimeError):
    """The remote server failed or answered something this engine cannot use."""


def refuse_full_checkpoint(path: str) -> None:
    """A full checkpoint cannot go to `/v1/load_lora_adapter`: say so before vLLM answers something obscure.

    Only a path visible here is checked; vLLM may see paths this process does not (another mount), and those
    go through for vLLM to judge.
    """
    directory = Path(path)
    if (directory / "config.json").is_file() and not is_adapter_dir(directory):
        raise ValueError(
            f"{path} is a full checkpoint, but vLLM loads only LoRA adapters at run time (weight_sync=lora). "
            "Train the policy as an adapter: `hyperparameters.lora: true` (and `merge_lora: false` for SFT jobs), "
            "or restart vLLM on this checkpoint, or sync through a SCoRe student service (weight_sync=score)."
        )


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        tokenizer,
        model_name: str | None = None,
        api_key: str | None = None,
        weight_sync: str = "lora",
        timeout_s: float = 300.0,
        context_length: int = 4096,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokenizer = tokenizer
        self.model_name = model_name or ""
        self.weight_sync = weight_sync  # "lora" (vLLM adapters) or "score" (our POST /v1/weights)
        self.context_length = context_length
        self.weights_path = self.base_url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = traced_async_client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._generated = 0.0

    async def start(self) -> None:
        if self.model_name:
            return
        response = await self._client.get("/models")
        self._check(response, "GET /models")
        models = response.json().get("data", [])
        if not models:
            raise RemoteEngineError(f"{self.base_url}/models lists no model")
        self.model_name = models[0]["id"]
        log.info("remote engine ready base_url=%s model=%s", self.base_url, self.model_name)

    async def close(self) -> None:
        await self._client.aclose()

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationOutput:
        body = {
            "model": self.model_name, "prompt": list(prompt_ids), "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed,
            "stop": sampling.stop or None, "logprobs": 1, "return_tokens_as_token_ids": True,
            "skip_special_tokens": True,
        }
        response = await self._client.post("/completions", json=body)
        self._check(response, "POST /completions")
        completion = CompletionResponse.model_validate(response.json())
        choice = completion.choices[0]
        if choice.logprobs is None:
            raise RemoteEngineError("the server returned no logprobs; token-exact rollouts need `logprobs=1`")
        token_ids = [self._token_id(token) for token in choice.logprobs.tokens]
        self._generated += len(token_ids)
        return GenerationOutput(
            token_ids=token_ids, logprobs=[float(x) for x in choice.logprobs.token_logprobs], text=choice.text,
            finish_reason=choice.finish_reason, prompt_tokens=len(prompt_ids), policy_version=self.policy_version,
        )

    async def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """The server's log-probabilities of given tokens: vLLM's `prompt_logprobs=0` on a `max_tokens=1` completion
        per sequence, sent together (the server batches them)."""
        return list(await asyncio.gather(*(self._score_one(tokens, start) for tokens, start in zip(sequences, starts))))

    async def _score_one(self, tokens: list[int], start: int) -> list[float]:
        body = {"model": self.model_name, "prompt": list(tokens), "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0}
        response = await self._client.post("/completions", json=body)
        self._check(response, "POST /completions (prompt_logprobs)")
        completion = CompletionResponse.model_validate(response.json())
        entries = completion.choices[0].prompt_logprobs if completion.choices else None
        if entries is None or len(entries) != len(tokens):
            raise RemoteEngineError(
                f"the server returned {0 if entries is None else len(entries)} prompt log-probabilities for "
                f"{len(tokens)} tokens; scoring needs vLLM's `prompt_logprobs`")
        scores = [0.0] * len(tokens)
        for position in range(start, len(tokens)):
            entry = entries[position] or {}
            picked = entry.get(str(tokens[position])) or entry.get(f"{_TOKEN_ID_PREFIX}{tokens[position]}")
            if picked is None:
                raise RemoteEngineError(f"the server's prompt_logprobs[{position}] has no entry for token "
                                        f"{tokens[position]}")
            scores[position] = float(picked.logprob)
        return scores

    async def load_weights(self, path: str, version: int) -> None:
        if self.weight_sync == "score":
            response = await self._client.post("/weights", json={"path": path, "version": version})
            self._check(response, "POST /weights")
        else:
            refuse_full_checkpoint(path)
            name = f"policy-v{version}"
            response = await self._client.post("/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            self._check(response, "POST /load_lora_adapter")
            self.model_name = name
        self.policy_version, self.weights_path = version, path

    def stats(self) -> dict[str, float]:
        return {"generated_tokens": self._generated}

    def _token_id(self, token: str) -> int:
        if token.startswith(_TOKEN_ID_PREFIX):
            return int(token[len(_TOKEN_ID_PREFIX):])
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise RemoteEngineError(f"cannot map returned token {token!r} to an id; enable return_tokens_as_token_ids")
        return int(token_id)

    @staticmethod
    def _check(response: httpx.Response, what: str) -> None:
        if response.status_code >= 400:
            raise RemoteEngineError(f"{what} -> HTTP {response.status_code}: {response.text[:500]}")
