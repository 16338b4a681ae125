"""In-process generation with Hugging Face transformers: KV cache, dynamic batching.

Concurrent `generate` calls are gathered by one worker thread into a single
batched generation: the batch waits for requests the service has announced
(`arrivals.py`) while they are still in their handlers, and for a short gap
after each request that came unannounced (an in-process caller), both
bounded; then it runs left-padded with a KV cache, each row with its own
temperature, top-p, token budget, stop strings and seed. Requests that come
later join the running batch between two steps. Rows that finish are dropped
from the cache so long tails do not pay for short ones.

The decode loop's KV cache is `kv_cache`: "slots" (default, `kv_slots.py`), preallocated per-row slots
written in place each step, or "legacy" (`batch.LiveBatch` on a transformers DynamicCache, one
concatenation per layer and step), kept for side-by-side measurements. Prefill is the same for both, and
so are the samples (the slot layout only drops masked padding from attention).

With a prefix cache (`prefix_cache_mb` > 0), a finished row's KV states are
kept (`shared/models/prefix_cache.py`), and a later prompt that starts with
the same tokens (the episode's next turn) prefills only the rest: its cached
states are placed in the batch's KV cache and only the new tokens run through
the model. Sampling does not change: a row's logits are those of the same
tokens at the same positions, whether its prefix was computed now or before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from typing import get_args

import torch
from transformers import DynamicCache

from shared.models.arrivals import Arrival, Arrivals
from shared.models.batch import LiveBatch, Request, Row, cached_states
from shared.models.kv_slots import SlotBatch, slots_unsupported
from shared.models.engine import Engine, EngineStoppedError, GenerationOutput, KVCacheKind, PromptTooLongError
from shared.models.loading import load_causal_lm
from shared.models.prefix_cache import PrefixCache
from shared.models.sampling import sample_next, seed_stream
from shared.models.token_logprobs import sequence_logprobs
from shared.schemas.sampling import SamplingParams

log = logging.getLogger("score.engine")


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
        arrival_wait_ms: float = 100.0,
        policy_version: int = 0,
        prefix_cache_mb: float = 0.0,
        kv_cache: KVCacheKind = "slots",
    ) -> None:
        if kv_cache not in get_args(KVCacheKind):
            raise ValueError(f"kv_cache must be one of {', '.join(get_args(KVCacheKind))}, not {kv_cache!r}")
        self.weights_path = str(model_path)
        self.model_name = model_name or "score-model"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.gather_gap_s = gather_gap_ms / 1000
        self.gather_max_s = gather_max_ms / 1000
        self.policy_version = policy_version
        self.kv_cache = kv_cache
        self._arrivals = Arrivals(window_s=arrival_wait_ms / 1000)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._model_lock = threading.Lock()  # the worker holds it for a batch; weight swaps wait for it
        self._worker: threading.Thread | None = None
        self._current: list[Row] = []  # rows of the batch being decoded (to fail them if it crashes)
        self._failure: str | None = None  # why the worker stopped, once it has
        self.model = None
        self.tokenizer = None
        # Only the worker thread touches the prefix cache, except load_weights' clear under the model lock.
        self._prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self._stats = {
            "generated_tokens": 0.0, "prompt_tokens": 0.0, "batches": 0.0, "batched_requests": 0.0,
            "joined_requests": 0.0, "prefill_tokens": 0.0, "cached_tokens": 0.0, "prefix_cache_evictions": 0.0,
            "scored_tokens": 0.0,
        }

    # ---- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.model, self.tokenizer = await asyncio.to_thread(
            load_causal_lm, self.weights_path, device=self.device, dtype=self.dtype
        )
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 4096))
        unsupported = slots_unsupported(self.model) if self.kv_cache == "slots" else None
        if unsupported:
            log.warning("kv_cache slots cannot serve this model (%s): using the legacy layout", unsupported)
            self.kv_cache = "legacy"
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
            if self._prefix_cache is not None:  # KV states belong to the weights that computed them
                self._prefix_cache.clear()
        log.info("weights loaded version=%d path=%s", version, path)

    def stats(self) -> dict[str, float]:
        stats = dict(self._stats)
        stats["announced_requests"] = float(self._arrivals.announced)
        if self._prefix_cache is not None:
            stats["prefix_cache_evictions"] = float(self._prefix_cache.evictions)
        return stats

    def arrival(self) -> Arrival:
        return self._arrivals.arrival()

    def failure(self) -> str | None:
        if self._failure is None and self._worker is not None and not self._worker.is_alive():
            return "the generation worker stopped"
        return self._failure

    # ---- requests --------------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> GenerationOutput:
        room = self.context_length - len(prompt_ids)
        if room < 1:
            raise PromptTooLongError(
                f"prompt has {len(prompt_ids)} tokens; the model's context is {self.context_length}"
            )
        if self._worker is None:
            raise RuntimeError("engine not started")
        if self.failure() is not None:
            raise EngineStoppedError(f"engine cannot generate: {self.failure()}")
        loop = asyncio.get_running_loop()
        arrival = self._arrivals.current()
        request = Request(list(prompt_ids), sampling, loop.create_future(), loop, min(sampling.max_tokens, room),
                          announced=arrival is not None)
        self._queue.put(request)
        if arrival is not None:  # queued: nothing left to wait for
            arrival.settle()
        if not self._worker.is_alive():  # it stopped between the check and the put: nobody will answer
            self._fail_waiting(EngineStoppedError("engine cannot generate: the generation worker stopped"))
        return await request.future

    async def score(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Teacher-forced log-probabilities of given tokens: one forward per batch of sequences, in a thread, under
        the model lock (between generation batches, never with half-swapped weights)."""
        for i, tokens in enumerate(sequences):
            if len(tokens) > self.context_length:
                raise PromptTooLongError(f"sequence {i} has {len(tokens)} tokens; the model's context is "
                                         f"{self.context_length}")
        if self.model is None:
            raise RuntimeError("engine not started")

        def run() -> list[list[float]]:
            with self._model_lock:
                pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
                scored = sequence_logprobs(self.model, sequences, starts, pad_id=pad_id)
            self._stats["scored_tokens"] += sum(map(len, sequences))
            return scored

        return await asyncio.to_thread(run)

    # ---- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        """Serve batches until shutdown. Whatever one request holds (a seed torch refuses, a prompt the model
        chokes on) fails that request or its batch, never this thread; should the thread end anyway, every
        waiting request is failed and `failure()` makes `/ready` answer 503 instead of hanging callers."""
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                self._current = self._rows(self._gather(first))
                if not self._current:
                    continue
                try:
                    with self._model_lock:
                        self._run_batch(self._current)
                except Exception as exc:  # a failed batch fails its requests, never the worker
                    log.exception("generation batch of %d failed", len(self._current))
                    for row in self._current:
                        self._resolve(row.request, exc)  # no-op for rows already answered
        except BaseException as exc:
            self._failure = f"the generation worker stopped: {type(exc).__name__}: {exc}"
            log.exception("generation worker stopped")
            for row in self._current:
                self._resolve(row.request, EngineStoppedError(self._failure))
            # Logged above and reported by failure() (so /ready); nothing is left to re-raise it to.
        finally:
            if self._failure is None:
                self._failure = "the engine was closed"
            self._fail_waiting(EngineStoppedError(f"engine cannot generate: {self._failure}"))

    def _rows(self, requests: list[Request]) -> list[Row]:
        """Rows for `requests`; a request whose sampling cannot be set up is failed on its own."""
        rows = []
        for request in requests:
            try:
                rows.append(Row(request, seed_stream(request.sampling.seed)))
            except Exception as exc:
                self._resolve(request, ValueError(f"cannot sample with {request.sampling!r}: {exc}"))
        return rows

    def _fail_waiting(self, exc: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._resolve(item, exc)

    def _gather(self, first: Request) -> list[Request]:
        """Collect requests while announced ones are on their way (each for its own window) and while
        unannounced ones keep coming (gap-bounded, up to `gather_max_s`), up to the batch size."""
        return [first] + self._collect(self.max_batch_size - 1, gap_s=self.gather_gap_s, announced_before=math.inf,
                                       after=first)

    def _collect(
        self, room: int, *, gap_s: float, announced_before: float, after: Request | None = None
    ) -> list[Request]:
        """Up to `room` queued requests, waiting while requests announced before `announced_before` are still
        on their way (the arrival window at most) and, with a `gap_s`, for `gap_s` after each unannounced one
        (`after` included; `gather_max_s` at most). The gap is a guess at what in-process callers (the rollout
        runner's episodes) send next; announced requests say what is coming, so they open none."""
        taken: list[Request] = []
        now = time.monotonic()
        gap_cap, arrival_cap = now + self.gather_max_s, now + self._arrivals.window_s
        gap_end = now + gap_s if after is not None and not after.announced else now
        while len(taken) < room:
            now = time.monotonic()
            expected = min(arrival_cap, self._arrivals.expected_until(announced_before))
            until = max(min(gap_cap, gap_end), expected)
            try:
                item = self._queue.get_nowait() if until <= now else self._queue.get(timeout=until - now)
            except queue.Empty:
                if until <= now:
                    break
                continue  # time is up for what we waited for; an announcement since may extend it
            if item is None:  # shutdown: finish the current batch first
                self._queue.put(None)
                break
            taken.append(item)
            if not item.announced:
                gap_end = time.monotonic() + gap_s
        return taken

    @staticmethod
    def _resolve(request: Request, result: GenerationOutput | Exception) -> None:
        def _set() -> None:
            if request.future.done():
                return
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

        try:
            request.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # its event loop is closed: nobody is waiting any more
            pass

    @torch.inference_mode()
    def _run_batch(self, rows: list[Row]) -> None:
        """Decode `rows`, answering each request as it finishes; requests that arrive meanwhile join the
        batch at the next step (continuous batching), so a burst is not split into serial batches."""
        eos_ids = self._eos_ids()
        self._stats["batches"] += 1  # counters move before a request is answered, so its caller sees them
        live = self._prefill(rows)
        while True:
            logp = torch.log_softmax(live.logits, dim=-1)
            tokens = sample_next(live.logits, live.temperature, live.top_p, [r.stream for r in live.rows],
                                 [len(r.token_ids) for r in live.rows])
            chosen_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            finished = []
            for i, (row, token, token_logp) in enumerate(zip(live.rows, tokens.tolist(), chosen_logp.tolist())):
                self._append(row, token, token_logp, eos_ids)
                if row.finish_reason is not None:
                    self._keep_prefix(live, i)
                    self._stats["generated_tokens"] += len(row.token_ids)
                    finished.append(row)
            if finished:
                # `rows` (the worker's `_current`, failed if the batch crashes) keeps only unanswered rows: a busy
                # service decodes one batch for a whole stage, and answered rows would pin their prompts, tokens
                # and the prefix cache entries they reused (KV states evicted long ago) until it ends. Pruned
                # before the answers go out, so a caller that wakes on its answer never sees its row still held.
                rows[:] = [row for row in rows if row.finish_reason is None]
                for row in finished:
                    self._resolve(row.request, self._output(row))
                order = live.select([pos for pos, row in enumerate(live.rows) if row.finish_reason is None])
                tokens = tokens[torch.tensor(order, dtype=torch.long, device=self.device)]
            if not live.rows:
                break  # what is queued now starts a batch of its own
            live.step(self.model, tokens)
            # Only what was announced by now: a steady stream of requests cannot hold the running rows back.
            room = self.max_batch_size - len(live.rows)
            joined = self._rows(self._collect(room, gap_s=0.0, announced_before=time.monotonic()))
            if joined:
                rows.extend(joined)
                live = self._prefill(joined, into=live)
                self._stats["joined_requests"] += len(joined)

    def _prefill(self, rows: list[Row], into: LiveBatch | SlotBatch | None = None) -> LiveBatch | SlotBatch:
        """Run the prompts of `rows` through the model, reusing cached prefixes, into the running batch `into`
        (or a new one: a slot batch unless `kv_cache` is legacy).

        Rows with a cached prefix and rows without are prefilled apart and merged: a short new segment
        (an observation turn) is not padded to the width of a whole new prompt."""
        if self._prefix_cache is not None:
            for row in rows:
                row.source, row.reused = self._prefix_cache.lookup(row.request.prompt_ids)
        groups = [group for group in ([r for r in rows if not r.reused], [r for r in rows if r.reused]) if group]
        live = into
        if live is None and self.kv_cache == "slots":
            live = SlotBatch(self.max_batch_size)
        for group in groups:
            part = self._prefill_group(group)
            live = part if live is None else live.merge(part)
        self._stats["batched_requests"] += len(rows)
        self._stats["prompt_tokens"] += sum(len(row.request.prompt_ids) for row in rows)
        self._stats["cached_tokens"] += sum(row.reused for row in rows)
        self._stats["prefill_tokens"] += sum(len(row.request.prompt_ids) - row.reused for row in rows)
        return live

    def _prefill_group(self, rows: list[Row]) -> LiveBatch:
        """One forward over the uncached part of each prompt.

        Layout per row: [pad | cached prefix (c tokens) | pad | new tokens (n)] in C + N columns, C and N
        the widest cached and new parts. The cached states fill the first C columns of the KV cache, the
        new tokens are the input; padding is masked out and every token keeps its true position id, so
        each row computes exactly what a prefill of its whole prompt would."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        cached_width = max(row.reused for row in rows)
        new_width = max(len(row.request.prompt_ids) - row.reused for row in rows)
        input_ids = torch.full((len(rows), new_width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), cached_width + new_width), dtype=torch.long)
        position_ids = torch.zeros((len(rows), new_width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding keeps every row's last token in the last column
            prompt, reused = row.request.prompt_ids, row.reused
            new = len(prompt) - reused
            input_ids[i, new_width - new:] = torch.tensor(prompt[reused:])
            attention_mask[i, cached_width - reused: cached_width] = 1
            attention_mask[i, cached_width + new_width - new:] = 1
            position_ids[i, new_width - new:] = torch.arange(reused, len(prompt))
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        position_ids = position_ids.to(self.device)
        cache = DynamicCache() if cached_width == 0 else DynamicCache(ddp_cache_data=cached_states(rows))
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        return LiveBatch(
            rows=list(rows), cache=cache, attention_mask=attention_mask,
            next_pos=torch.tensor([len(r.request.prompt_ids) for r in rows], device=self.device),
            logits=out.logits[:, -1, :].float(),
            temperature=torch.tensor([r.request.sampling.temperature for r in rows], device=self.device),
            top_p=torch.tensor([r.request.sampling.top_p for r in rows], device=self.device),
        )

    def _keep_prefix(self, live: LiveBatch, i: int) -> None:
        """Store finished row i's states: prompt + generated[:-1] (the last token was sampled, never fed)."""
        if self._prefix_cache is None:
            return
        row = live.rows[i]
        keys, values = live.row_states(i)
        tokens = row.request.prompt_ids + row.token_ids[:-1]
        if keys[0].shape[1] != len(tokens):  # the cache layout is not what this code assumes: keep nothing
            log.warning("prefix cache skipped a row: %d states for %d tokens", keys[0].shape[1], len(tokens))
            return
        if row.source is not None and row.reused == len(row.source.tokens):
            self._prefix_cache.remove(row.source.id)  # the new entry extends it: same reuse, no second copy
        self._prefix_cache.insert(tokens, keys, values)

    def _append(self, row: Row, token: int, token_logp: float, eos_ids: set[int]) -> None:
        row.token_ids.append(token)
        row.logprobs.append(token_logp)
        if token in eos_ids:
            row.finish_reason = "stop"
            return
        stops = row.request.sampling.stop
        if stops:
            # Earlier tokens held no stop, so a new match ends in the last few tokens: decode only those
            # (a stop of n characters spans at most 4n byte-level tokens), not the whole turn each step.
            window = 4 * max(map(len, stops)) + 4
            tail = self.tokenizer.decode(row.token_ids[-window:], skip_special_tokens=True)
            if any(stop in tail for stop in stops):
                text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
                row.finish_reason = "stop"
                row.stop_cut = min(cut for cut in (text.find(stop) for stop in stops) if cut >= 0)
                return
        if len(row.token_ids) >= row.request.max_new:
            row.finish_reason = "length"

    def _output(self, row: Row) -> GenerationOutput:
        text = self.tokenizer.decode(row.token_ids, skip_special_tokens=True)
        if row.stop_cut is not None:
            text = text[: row.stop_cut]
        return GenerationOutput(
            token_ids=row.token_ids, logprobs=row.logprobs, text=text,
            finish_reason=row.finish_reason or "length", prompt_tokens=len(row.request.prompt_ids),
            cached_tokens=row.reused, policy_version=self.policy_version,
        )

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        return {i for i in ids if i is not None}
