"""In-process generation with Hugging Face transformers: KV cache, dynamic batching.

Concurrent `generate` calls are gathered by one worker thread into a single
batched generation: the first request opens a short gathering window that
stays open while more keep arriving (bounded), then the batch runs
left-padded with a KV cache, each row with its own temperature, top-p, token
budget, stop strings and seed. Rows that finish are dropped from the cache so
long tails do not pay for short ones.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from shared.models.engine import Engine, GenerationOutput, PromptTooLongError
from shared.models.loading import load_causal_lm
from shared.models.sampling import sample_next
from shared.schemas.sampling import SamplingParams

log = logging.getLogger("score.engine")


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    max_new: int = 0


@dataclass
class _Row:
    """Generation state of one request inside a batch."""

    request: _Request
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    stop_cut: int | None = None  # text length to keep when a stop string matched


class TransformersEngine(Engine):
    kind = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 64,
        gather_gap_ms: float = 4.0,
        gather_max_ms: float = 40.0,
        policy_version: int = 0,
    ) -> None:
        self.weights_path = str(model_path)
        self.model_name = model_name or "score-model"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.gather_gap_s = gather_gap_ms / 1000
        self.gather_max_s = gather_max_ms / 1000
        self.policy_version = policy_version
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._model_lock = threading.Lock()  # the worker holds it for a batch; weight swaps wait for it
        self._worker: threading.Thread | None = None
        self.model = None
        self.tokenizer = None
        self._stats = {"generated_tokens": 0.0, "prompt_tokens": 0.0, "batches": 0.0, "batched_requests": 0.0}

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.model, self.tokenizer = await asyncio.to_thread(
            load_causal_lm, self.weights_path, device=self.device, dtype=self.dtype
        )
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 4096))
        self._worker = threading.Thread(target=self._work, name="generation-worker", daemon=True)
        self._worker.start()
        log.info("engine ready model=%s device=%s path=%s", self.model_name, self.device, self.weights_path)

    async def close(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._worker.join, 10)
            self._worker = None

    async def load_weights(self, path: str, version: int) -> None:
        model, tokenizer = await asyncio.to_thread(load_causal_lm, path, device=self.device, dtype=self.dtype)
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"checkpoint at {path} has a different vocabulary than the served model")
        with self._model_lock:
            self.model, self.tokenizer = model, tokenizer
            self.weights_path, self.policy_version = str(path), version
        log.info("weights loaded version=%d path=%s", version, path)

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    # ---- requests --------------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationOutput:
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"prompt has {len(prompt_ids)} tokens; the model's context is {self.context_length}"
            )
        if self._worker is None:
            raise RuntimeError("engine not started")
        loop = asyncio.get_running_loop()
        request = _Request(list(prompt_ids), sampling, loop.create_future(), loop, min(sampling.max_tokens, room))
        self._queue.put(request)
        return await request.future

    # ---- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = self._gather(first)
            try:
                with self._model_lock:
                    outputs = self._generate_batch(batch)
                for request, output in zip(batch, outputs):
                    self._resolve(request, output)
            except Exception as exc:  # a failed batch fails its requests, never the worker
                log.exception("generation batch of %d failed", len(batch))
                for request in batch:
                    self._resolve(request, exc)

    def _gather(self, first: _Request) -> list[_Request]:
        """Collect requests while they keep arriving (gap-bounded) up to the batch size and a time cap."""
        batch = [first]
        deadline = time.monotonic() + self.gather_max_s
        while len(batch) < self.max_batch_size:
            remaining = min(self.gather_gap_s, deadline - time.monotonic())
            if remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is None:  # shutdown: finish this batch, then stop
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    @staticmethod
    def _resolve(request: _Request, result: GenerationOutput | Exception) -> None:
        def _set() -> None:
            if request.future.done():
                return
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

        request.loop.call_soon_threadsafe(_set)

    @torch.inference_mode()
    def _generate_batch(self, batch: list[_Request]) -> list[GenerationOutput]:
        model, tokenizer, device = self.model, self.tokenizer, self.device
        rows = [_Row(r, self._generator(r.sampling.seed)) for r in batch]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos_ids = self._eos_ids()

        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, request in enumerate(batch):  # left padding keeps every row's last token in the last column
            input_ids[i, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            attention_mask[i, width - len(request.prompt_ids):] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        temperature = torch.tensor([r.sampling.temperature for r in batch], device=device)
        top_p = torch.tensor([r.sampling.top_p for r in batch], device=device)

        cache = DynamicCache()
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        active = list(range(len(rows)))  # row index of each live batch position
        next_pos = position_ids[:, -1] + 1  # (B_live,)
        while True:
            logits = out.logits[:, -1, :].float()  # (B_live, V)
            logp = torch.log_softmax(logits, dim=-1)
            tokens = sample_next(logits, temperature, top_p, [rows[i].generator for i in active])
            chosen_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            for pos, (token, token_logp) in enumerate(zip(tokens.tolist(), chosen_logp.tolist())):
                self._append(rows[active[pos]], token, token_logp, eos_ids)
            keep = [pos for pos, i in enumerate(active) if rows[i].finish_reason is None]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                for layer in cache.layers:
                    layer.batch_select_indices(index)
                tokens, attention_mask = tokens[index], attention_mask[index]
                temperature, top_p, next_pos = temperature[index], top_p[index], next_pos[index]
                active = [active[pos] for pos in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
            out = model(
                input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask,
                position_ids=next_pos.unsqueeze(-1), past_key_values=cache, use_cache=True,
            )
            next_pos = next_pos + 1

        self._stats["batches"] += 1
        self._stats["batched_requests"] += len(batch)
        self._stats["prompt_tokens"] += sum(len(r.prompt_ids) for r in batch)
        self._stats["generated_tokens"] += sum(len(row.token_ids) for row in rows)
        return [self._output(row) for row in rows]

    def _append(self, row: _Row, token: int, token_logp: float, eos_ids: set[int]) -> None:
        row.token_ids.append(token)
        row.logprobs.append(token_logp)
        if token in eos_ids:
            row.finish_reason = "stop"
            return
        stops = row.request.sampling.stop
        if stops:
            text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
            for stop in stops:
                cut = text.find(stop)
                if cut >= 0:
                    row.finish_reason, row.stop_cut = "stop", cut
                    return
        if len(row.token_ids) >= row.request.max_new:
            row.finish_reason = "length"

    def _output(self, row: _Row) -> GenerationOutput:
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        if row.stop_cut is not None:
            text = text[: row.stop_cut]
        return GenerationOutput(
            token_ids=row.token_ids, logprobs=row.logprobs, text=text,
            finish_reason=row.finish_reason or "length", prompt_tokens=len(row.request.prompt_ids),
            policy_version=self.policy_version,
        )

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return {i for i in ids if i is not None}

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator
