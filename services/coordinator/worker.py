"""A stage worker: reads work items and control actions from the Redis Streams and processes them.

Run as a process of its own (`python -m services.coordinator.worker`); the coordinator service starts and
supervises several. Processing is idempotent per (run, stage, item key), delivery at least once:

- an item's result is recorded once (Lua: HSETNX + count) in the same step that enqueues its follow-ups and
  acks it; a redelivered item is acked without work;
- items being processed are kept alive; a dead worker's items are reclaimed after the visibility timeout;
- a failing item is retried with exponential backoff, every start counted (crashes included), and after
  `max_attempts` it goes to the stage's dead-letter stream with its error and the stage goes on without it;
- a control action that keeps failing fails the run, with the error in the run record and the event stream;
- Redis outages are logged with the URL and retried; nothing is lost, since unacked items stay pending.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
import traceback
import uuid

import uvloop
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.coordinator import keys, pipeline
from services.coordinator.config import CoordinatorConfig
from services.coordinator.context import RunContext, services_for
from services.coordinator.queue import QUEUES, StageQueue, WorkItem
from services.coordinator.redis_client import connect
from services.coordinator.store import RunNotFound, RunStore
from shared import scoring_pool
from shared.observability import configure_logging, log_context, new_request_id
from shared.schemas.runs import RunState
from shared.settings import Settings, describe_invalid, given_flags

logger = logging.getLogger("score.coordinator.worker")

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)


class Worker:
    def __init__(self, settings: Settings, *, redis_url: str, consumer: str | None = None, concurrency: int = 32,
                 visibility_ms: int = 60_000, block_ms: int = 500) -> None:
        self.settings = settings
        self.redis_url = redis_url
        # The pid in the name lets an operator (or a test) find the process holding a pending item.
        self.consumer = f"{consumer or 'worker'}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.concurrency = concurrency
        self.visibility_ms = visibility_ms
        self.block_ms = block_ms
        self.redis = connect(redis_url, socket_timeout=max(5.0, block_ms / 1000 + 5),
                             socket_connect_timeout=3.0, health_check_interval=10)
        self.queue = StageQueue(self.redis, self.consumer)
        self.store = RunStore(self.redis, settings.runs_dir)
        self.inflight: dict[str, tuple[WorkItem, asyncio.Task]] = {}
        self.contexts: dict[str, RunContext] = {}
        self.stopping = asyncio.Event()
        self._cpu_mark = time.process_time()
        self._active_runs: set[str] = set()

    # --- main loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        logger.info("worker %s consuming %s from %s", self.consumer, ", ".join(QUEUES), self.redis_url)
        delay = 0.5
        while not self.stopping.is_set():
            try:
                await self.queue.ensure_groups()
                delay = 0.5
                await self._loop()
            except REDIS_ERRORS as exc:
                logger.error("Redis unreachable at %s (%s); retrying in %.1fs — unacked items stay pending",
                             self.redis_url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)
        await self._drain()

    async def _loop(self) -> None:
        last_keepalive = last_reclaim = time.monotonic()
        while not self.stopping.is_set():
            free = self.concurrency - len(self.inflight)
            if free > 0:
                for item in await self.queue.read(list(QUEUES), count=free, block_ms=self.block_ms):
                    self._spawn(item)
            else:
                await asyncio.sleep(0.05)
            now = time.monotonic()
            if now - last_keepalive > self.visibility_ms / 3000:
                await self.queue.keep_alive([item for item, _ in self.inflight.values()])
                await self._account_cpu()
                last_keepalive = now
            if now - last_reclaim > self.visibility_ms / 2000:
                for queue in QUEUES:
                    for item in await self.queue.reclaim(queue, min_idle_ms=self.visibility_ms):
                        if item.entry_id not in self.inflight:
                            logger.warning("reclaimed %s/%s of run %s (its worker stopped responding)",
                                           item.stage, item.key, item.run_id)
                            self._spawn(item)
                last_reclaim = now

    def _spawn(self, item: WorkItem) -> None:
        if item.entry_id in self.inflight:
            return
        task = asyncio.create_task(self._process_safely(item))
        self.inflight[item.entry_id] = (item, task)
        task.add_done_callback(lambda _t, entry=item.entry_id: self.inflight.pop(entry, None))

    async def _drain(self) -> None:
        tasks = [task for _, task in self.inflight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for context in self.contexts.values():
            await context.services.close()
        await self.redis.aclose()

    async def _account_cpu(self) -> None:
        """Charge this process's CPU time to the runs it worked on: the coordinator's own overhead."""
        now = time.process_time()
        spent, self._cpu_mark = now - self._cpu_mark, now
        runs, self._active_runs = self._active_runs, {item.run_id for item, _ in self.inflight.values()}
        for run_id in runs:
            await self.store.add(run_id, coordinator_overhead_s=spent / len(runs))

    # --- one item ------------------------------------------------------------------------------

    async def _process_safely(self, item: WorkItem) -> None:
        self._active_runs.add(item.run_id)
        # One request id per delivery: the calls to the model services made for it carry it, with the run id.
        with log_context(request_id=new_request_id(), run_id=item.run_id, stage=item.stage, item=item.key):
            try:
                await self._process(item)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                logger.error("lost Redis while processing %s/%s of run %s: %s (it stays pending and will be "
                             "retried)", item.stage, item.key, item.run_id, exc)
            except Exception:
                logger.exception("unexpected failure around %s/%s of run %s", item.stage, item.key, item.run_id)

    async def _context(self, run_id: str) -> RunContext:
        context = self.contexts.get(run_id)
        if context is None:
            config = await self.store.config(run_id)
            context = RunContext(run_id=run_id, config=config, store=self.store, queue=self.queue,
                                 services=services_for(config, self.settings), run_dir=self.settings.runs_dir / run_id,
                                 checkpoints_dir=self.settings.checkpoints_dir)
            self.contexts[run_id] = context
        return context

    async def _process(self, item: WorkItem) -> None:
        try:
            state = await self.store.state(item.run_id)
        except RunNotFound:
            logger.warning("dropping %s/%s: run %s does not exist", item.stage, item.key, item.run_id)
            await self.queue.ack(item)
            return
        if state.terminal:
            await self.queue.ack(item)
            await self._forget(item.run_id)
            return
        ctx = await self._context(item.run_id)
        stage = pipeline.BY_NAME.get(item.stage)
        if stage is None:
            await self._dead_letter(ctx, item, f"unknown stage {item.stage!r}", 1, count=False)
            return
        if item.queue == keys.CONTROL:
            await self._control(ctx, item)
            return
        if await self.store.has_result(item.run_id, item.stage, item.key):
            # Its follow-ups went out with its result (one step); only the stage's finish needs making sure of.
            await pipeline.resettle(ctx, stage)
            await self.queue.ack(item)
            return
        await self._attempt(ctx, item, stage)

    async def _attempt(self, ctx: RunContext, item: WorkItem, stage) -> None:
        if not await self.store.is_planned(item.run_id, item.stage, item.key):
            await self._dead_letter(ctx, item, f"item {item.key!r} is not part of stage {item.stage}'s plan "
                                    "(stray or malformed item)", 0, count=False)
            return
        attempts = await self.store.count_attempt(item.run_id, item.stage, item.key)
        if attempts > ctx.config.max_attempts:
            await self._dead_letter(ctx, item, "gave up: the item was started "
                                    f"{attempts - 1} times without finishing (its worker died each time)", attempts - 1)
            return
        started = time.monotonic()
        try:
            async with ctx.limit:
                result = await stage.handle(ctx, item)
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS:
            raise
        except Exception as exc:
            if await self._retry_later(ctx, item, exc, attempts):
                return
            await self._dead_letter(ctx, item, _describe(exc), attempts)
            return
        await pipeline.settle(ctx, stage, item, result)  # record, follow-ups, finish and ack in one step
        logger.debug("[run %s] %s/%s done in %.2fs", item.run_id, item.stage, item.key, time.monotonic() - started)

    async def _retry_later(self, ctx: RunContext, item: WorkItem, exc: Exception, attempts: int) -> bool:
        """Re-enqueue a failed item after an exponential backoff; False once its attempts are used up."""
        logger.warning("[run %s] %s/%s failed (attempt %d/%d): %s: %s", item.run_id, item.stage, item.key, attempts,
                       ctx.config.max_attempts, type(exc).__name__, exc)
        if attempts >= ctx.config.max_attempts:
            return False
        await asyncio.sleep(min(30.0, 0.5 * 2 ** attempts))
        # A fresh entry for the retry, then ack the old one: whichever worker is free takes it.
        await self.queue.put(item.queue, [WorkItem(item.run_id, item.stage, item.key, item.payload)])
        await self.queue.ack(item)
        return True

    async def _dead_letter(self, ctx: RunContext, item: WorkItem, error: str, attempts: int, *, count: bool = True) -> None:
        logger.error("[run %s] %s/%s dead-lettered after %d attempts: %s", item.run_id, item.stage, item.key,
                     attempts, error.splitlines()[0] if error else "")
        if count and item.queue != keys.CONTROL:
            # The letter first, then record the failure and ack in one step: a crash in between redelivers the
            # item, which is dead-lettered again, rather than acking an item whose stage then never settles.
            await self.queue.add_dead_letter(item, error, attempts)
            await pipeline.settle(ctx, pipeline.BY_NAME[item.stage], item,
                                  {"dead_letter": True, "error": error[:2000]}, failed=True)
        else:
            await self.queue.dead_letter(item, error, attempts)
        await self.store.add(item.run_id, dead_letters=1)
        await self.store.event(item.run_id, "dead_letter", f"{item.stage}/{item.key} dead-lettered: "
                               f"{error.splitlines()[0] if error else ''}", stage=item.stage,
                               data={"key": item.key, "attempts": attempts, "error": error[:2000]})

    async def _control(self, ctx: RunContext, item: WorkItem) -> None:
        # Two copies of one action (a redelivery racing the original) must not run side by side.
        claim = keys.claim(item.run_id, item.key)
        if not await self.redis.set(claim, self.consumer, nx=True, px=self.visibility_ms):
            holder = await self.redis.get(claim)
            if holder is not None and holder.decode() != self.consumer:
                await self.queue.ack(item)
                return
        attempts = await self.store.count_attempt(item.run_id, "control", item.key)
        try:
            refresher = asyncio.create_task(self._hold(claim))
            try:
                await pipeline.handle_control(ctx, item)
            finally:
                refresher.cancel()
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS:
            raise
        except Exception as exc:
            await self.redis.delete(claim)
            if not await self._retry_later(ctx, item, exc, attempts):
                await self.queue.dead_letter(item, _describe(exc), attempts)
                await self.store.transition(item.run_id, RunState.failed,
                                            error=f"stage {item.stage}: {type(exc).__name__}: {exc}")
            return
        await self.redis.delete(claim)
        await self.queue.ack(item)

    async def _hold(self, claim: str) -> None:
        while True:
            await asyncio.sleep(self.visibility_ms / 3000)
            await self.redis.set(claim, self.consumer, px=self.visibility_ms)

    async def _forget(self, run_id: str) -> None:
        context = self.contexts.pop(run_id, None)
        if context is not None:
            await context.services.close()


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc, limit=6))


def main(argv: list[str] | None = None) -> int:
    # Started by the coordinator with every flag; run by hand, flags left out come from the coordinator's
    # settings (SCORE_REDIS_URL, SCORE_COORDINATOR_*), checked by the same rules.
    parser = argparse.ArgumentParser(description="A SCoRe coordinator stage worker.")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--concurrency", dest="worker_concurrency", type=int, default=None, metavar="N")
    parser.add_argument("--visibility-ms", type=int, default=None, metavar="MS")
    parser.add_argument("--consumer", default=None, help="consumer name prefix (the pid is appended)")
    args = parser.parse_args(argv)
    try:
        config = CoordinatorConfig(settings=Settings(**given_flags(args, "redis_url")),
                                   **given_flags(args, "worker_concurrency", "visibility_ms"))
    except ValidationError as exc:
        parser.error(describe_invalid(exc))
    settings = config.settings
    configure_logging(settings.log_level, "coordinator", settings.log_format, pid=True)
    scoring_pool.configure(settings)  # answers scored by the stages: bounded by these settings
    worker = Worker(settings, redis_url=settings.redis_url, consumer=args.consumer,
                    concurrency=config.worker_concurrency, visibility_ms=config.visibility_ms)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stopping.set)
        await worker.run()

    uvloop.run(run())  # a faster event loop: the worker is mostly Redis and HTTP round trips
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
