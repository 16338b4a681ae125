"""Request handlers of the student service. No HTTP here: models in, models out (vLLM's serving layer)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shared.agent.rollout import RolloutRunner
from shared.agent.tokens import chat_token_ids
from shared.errors import ConflictError, NotFoundError, ServiceError, UnavailableError, UnprocessableError
from shared.models.engine import Engine, PromptTooLongError
from shared.models.loading import is_adapter_dir
from shared.paths import PathRefused, confined
from shared.schemas.openai import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    PromptLogprob,
    TokenLogprob,
    Usage,
)
from shared.models.tokenizer_identity import tokenizer_info
from shared.schemas.logprobs import TokenizerInfo
from shared.schemas.rollout import RolloutRequest, RolloutResponse
from shared.schemas.sampling import SamplingParams, offset_seed
from shared.schemas.weights import LoadWeightsRequest, WeightsInfo
from shared.settings import Settings
from shared.sandbox.process import SandboxError
from shared.versioning import VersionGate

log = logging.getLogger("score.student")
DEFAULT_MAX_TOKENS = 256


class StudentServing:
    def __init__(self, *, engine: Engine, runner: RolloutRunner, settings: Settings) -> None:
        self.engine = engine
        self.runner = runner
        self._tokenizer_info: tuple[object, TokenizerInfo] | None = None
        self.settings = settings
        self.gate = VersionGate()
        self.episodes_total = 0

    # ---- OpenAI-compatible ----------------------------------------------------------------------
    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.engine.model_name, root=self.engine.weights_path)])

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        self._check_model(request.model)
        messages = [m.model_dump(include={"role", "content"}) for m in request.messages]
        prompt = chat_token_ids(self.engine.tokenizer, messages, add_generation_prompt=True)
        sampling = SamplingParams(
            temperature=request.temperature, top_p=request.top_p, stop=request.stop_list(), seed=request.seed,
            max_tokens=request.max_tokens or request.max_completion_tokens or DEFAULT_MAX_TOKENS,
        )
        outputs = await self._sample(prompt, sampling, request.n)
        choices = [
            ChatChoice(
                index=i, message=ChatMessage(role="assistant", content=out.text), finish_reason=out.finish_reason,
                logprobs=ChoiceLogprobs(content=self._token_logprobs(out)) if request.logprobs else None,
            )
            for i, out in enumerate(outputs)
        ]
        return ChatCompletionResponse(model=self.engine.model_name, choices=choices, usage=self._usage(prompt, outputs))

    async def completions(self, request: CompletionRequest) -> CompletionResponse:
        self._check_model(request.model)
        tokenizer = self.engine.tokenizer
        prompt = request.prompt if isinstance(request.prompt, list) else tokenizer(request.prompt)["input_ids"]
        vocab = len(tokenizer)
        bad = next((i for i, t in enumerate(prompt) if not 0 <= t < vocab), None)
        if bad is not None:
            raise UnprocessableError(f"prompt[{bad}] = {prompt[bad]} is not a token id (vocab size {vocab})", param="body.prompt")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        sampling = SamplingParams(
            temperature=request.temperature, top_p=request.top_p, max_tokens=request.max_tokens, stop=stop,
            seed=request.seed,
        )
        outputs = await self._sample(list(prompt), sampling, request.n)
        prompt_logprobs = await self._prompt_logprobs(list(prompt)) if request.prompt_logprobs is not None else None
        choices = []
        for i, out in enumerate(outputs):
            logprobs = None
            if request.logprobs is not None:
                tokens = (
                    [f"token_id:{t}" for t in out.token_ids] if request.return_tokens_as_token_ids
                    else [tokenizer.decode([t]) for t in out.token_ids]
                )
                logprobs = CompletionLogprobs(tokens=tokens, token_logprobs=out.logprobs)
            text = out.text if request.skip_special_tokens else tokenizer.decode(out.token_ids)
            choices.append(CompletionChoice(index=i, text=text, finish_reason=out.finish_reason, logprobs=logprobs,
                                            prompt_logprobs=prompt_logprobs))
        return CompletionResponse(model=self.engine.model_name, choices=choices, usage=self._usage(prompt, outputs))

    async def _prompt_logprobs(self, prompt: list[int]) -> list[dict[str, PromptLogprob] | None]:
        """vLLM's `prompt_logprobs=0`: each prompt token's own log-probability, null for the first."""
        if len(prompt) < 2:
            return [None] * len(prompt)
        async with self.gate.request():  # scored by one version, never across a weight swap
            try:
                [scores] = await self.engine.score([prompt], [1])
            except PromptTooLongError as exc:
                raise UnprocessableError(str(exc), param="body.prompt") from exc
        return [None] + [{str(token): PromptLogprob(logprob=lp)} for token, lp in zip(prompt[1:], scores[1:])]

    # ---- agent rollouts -------------------------------------------------------------------------
    async def rollouts(self, request: RolloutRequest) -> RolloutResponse:
        async with self.gate.request():
            version = self.engine.policy_version
            try:
                episodes = await self.runner.run(
                    request.items, n=request.n, max_turns=request.max_turns, sampling=request.sampling
                )
            except SandboxError as exc:  # the host refused an interpreter process: retry later, not a bug
                raise UnavailableError(f"sandbox unavailable: {exc}") from exc
        self.episodes_total += len(episodes)
        return RolloutResponse(episodes=episodes, policy_version=version)

    # ---- weights --------------------------------------------------------------------------------
    def weights(self) -> WeightsInfo:
        return WeightsInfo(
            policy_version=self.engine.policy_version, path=self.engine.weights_path, model=self.engine.model_name,
            tokenizer=self.tokenizer_info(),
        )

    def tokenizer_info(self) -> TokenizerInfo | None:
        """The served tokenizer's identity, computed once per tokenizer object (a weight load keeps the vocabulary)."""
        tokenizer = self.engine.tokenizer
        if tokenizer is None:
            return None
        if self._tokenizer_info is None or self._tokenizer_info[0] is not tokenizer:
            self._tokenizer_info = (tokenizer, tokenizer_info(tokenizer, self.engine.model_name))
        return self._tokenizer_info[1]

    async def load_weights(self, request: LoadWeightsRequest) -> WeightsInfo:
        path = self._resolve_checkpoint(request)
        async with self.gate.swap():
            # Checked under the swap: two loads racing cannot both pass and leave the lower one served.
            version = self._next_version(request, path)
            if version is None:
                return self.weights()  # the same checkpoint at the same version: nothing to do
            try:
                await self.engine.load_weights(str(path), version)
            except (OSError, ValueError) as exc:
                raise UnprocessableError(f"cannot load weights from {path}: {exc}", param="body.path") from exc
        return self.weights()

    def _next_version(self, request: LoadWeightsRequest, path: Path) -> int | None:
        """The version to serve `path` as; None when it is already served at that version. Versions only
        grow, so every sample's policy_version orders it in time and a stale one stays detectable."""
        current = self.engine.policy_version
        if request.version is None:
            return current + 1
        same = Path(self.engine.weights_path).resolve() == path.resolve()
        if request.version == current and same:
            return None
        if request.version <= current:
            raise ConflictError(
                f"policy version {request.version} is not above the served version {current}"
                f"{'' if same else ' (a different checkpoint)'}; versions only grow: load it as version "
                f"{current + 1} or higher, or leave `version` out", param="body.version")
        return request.version

    def _resolve_checkpoint(self, request: LoadWeightsRequest) -> Path:
        roots = self.settings.path_roots
        if request.path is not None:
            try:
                path = confined(request.path, roots, what="checkpoint directory")
            except PathRefused as exc:
                raise UnprocessableError(str(exc), param="body.path") from None
            param = "body.path"
        else:
            path = self.settings.checkpoints_dir / request.name / f"v{request.version}"
            param = "body.name"
        if self.engine.kind == "transformers" and not ((path / "config.json").is_file() or is_adapter_dir(path)):
            raise NotFoundError(f"no checkpoint at {path} (neither config.json nor adapter_config.json)", param=param)
        return path

    # ---- helpers --------------------------------------------------------------------------------
    async def _sample(self, prompt: list[int], sampling: SamplingParams, n: int):
        async with self.gate.request():
            calls = [
                self.engine.generate(
                    prompt, sampling.model_copy(update={"seed": offset_seed(sampling.seed, i)})
                )
                for i in range(n)
            ]
            try:
                return await asyncio.gather(*calls)
            except PromptTooLongError as exc:
                raise ServiceError(str(exc), param="body.messages") from exc

    def _check_model(self, model: str | None) -> None:
        if model and model != self.engine.model_name:
            raise NotFoundError(f"model {model!r} is not served here; use {self.engine.model_name!r}", param="body.model")

    def _token_logprobs(self, output) -> list[TokenLogprob]:
        tokenizer = self.engine.tokenizer
        return [TokenLogprob(token=tokenizer.decode([t]), logprob=lp) for t, lp in zip(output.token_ids, output.logprobs)]

    @staticmethod
    def _usage(prompt: list[int], outputs) -> Usage:
        completion = sum(len(o.token_ids) for o in outputs)
        return Usage(prompt_tokens=len(prompt), completion_tokens=completion, total_tokens=len(prompt) + completion)
