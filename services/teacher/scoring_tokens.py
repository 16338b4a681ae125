"""`POST /v1/logprobs`: the teacher model's log-probabilities of given tokens (the student's, for on-policy
distillation). Only model backends can score; the token ids must come from the teacher's own tokenizer."""

from __future__ import annotations

import logging
import time

import httpx

from shared.errors import UnavailableError, UnprocessableError
from shared.models.engine import Engine, PromptTooLongError
from shared.models.openai_engine import RemoteEngineError
from shared.models.tokenizer_identity import tokenizer_info
from shared.schemas.logprobs import LogprobRequest, LogprobResponse, ScoredSequence, TokenizerInfo
from shared.schemas.teacher import Cost

log = logging.getLogger("score.teacher")


def describe(info: TokenizerInfo) -> str:
    return f"{info.name!r} ({info.vocab_size} tokens, fingerprint {info.fingerprint[:12]})"


class TokenScorer:
    def __init__(self, engine: Engine | None, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self._tokenizer: TokenizerInfo | None = None
        self.scored_tokens = 0

    def tokenizer(self) -> TokenizerInfo:
        if self._tokenizer is None:  # the teacher's weights never change, nor does its vocabulary
            self._tokenizer = tokenizer_info(self.engine.tokenizer, self.model_name)
        return self._tokenizer

    async def score(self, request: LogprobRequest) -> LogprobResponse:
        if self.engine is None:
            raise UnprocessableError(
                "the expert teacher is a scripted solver without a model, so it has no log-probabilities; serve a "
                "teacher model (--engine transformers or openai) for on-policy distillation", param="body")
        own = self.tokenizer()
        if request.tokenizer is not None and request.tokenizer.fingerprint != own.fingerprint:
            raise UnprocessableError(
                f"the token ids come from tokenizer {describe(request.tokenizer)} but the teacher's is {describe(own)}: "
                "token-level distillation needs one vocabulary; use a student and teacher that share a tokenizer",
                param="body.tokenizer")
        sequences, starts, scored_items = [], [], []
        for i, sequence in enumerate(request.sequences):
            if max(sequence.token_ids) >= own.vocab_size:
                raise UnprocessableError(
                    f"token id {max(sequence.token_ids)} is outside the teacher's vocabulary of {own.vocab_size}",
                    param=f"body.sequences.{i}.token_ids")
            scored = [position for position, bit in enumerate(sequence.score_mask) if bit]
            if scored:  # the tokens after the last scored one are not read
                sequences.append(sequence.token_ids[: scored[-1] + 1])
                starts.append(scored[0])
                scored_items.append(i)
        started = time.perf_counter()
        try:
            scores = await self.engine.score(sequences, starts) if sequences else []
        except PromptTooLongError as exc:
            raise UnprocessableError(str(exc), param="body.sequences") from exc
        except (httpx.HTTPError, RemoteEngineError) as exc:
            raise UnavailableError(f"the teacher model failed: {exc}") from exc
        out = [ScoredSequence(logprobs=[0.0] * len(s.token_ids), scored_tokens=0) for s in request.sequences]
        for i, values in zip(scored_items, scores):
            mask = request.sequences[i].score_mask
            logprobs = [value if bit else 0.0 for value, bit in zip(values, mask)]
            out[i] = ScoredSequence(logprobs=logprobs + [0.0] * (len(mask) - len(logprobs)), scored_tokens=sum(mask))
        read = sum(map(len, sequences))
        self.scored_tokens += sum(s.scored_tokens for s in out)
        log.info("logprobs sequences=%d read_tokens=%d scored_tokens=%d duration_ms=%.0f", len(out), read,
                 sum(s.scored_tokens for s in out), (time.perf_counter() - started) * 1000)
        return LogprobResponse(sequences=out, tokenizer=own, model=self.model_name,
                               cost=Cost(teacher_calls=len(sequences), teacher_prompt_tokens=read))
