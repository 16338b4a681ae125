"""Starts the stage worker processes and restarts any that dies (they die with the coordinator too)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

from shared.processes import die_with_parent

logger = logging.getLogger("score.coordinator.supervisor")


class WorkerSupervisor:
    def __init__(self, *, count: int, redis_url: str, concurrency: int, visibility_ms: int, backoff_s: float,
                 env: dict | None = None) -> None:
        self.count, self.redis_url = count, redis_url
        self.concurrency, self.visibility_ms, self.backoff_s = concurrency, visibility_ms, backoff_s
        self.env = {**os.environ, **(env or {})}
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.restarts = 0
        self._task: asyncio.Task | None = None

    def _spawn(self, index: int) -> subprocess.Popen:
        command = [sys.executable, "-m", "services.coordinator.worker", "--redis-url", self.redis_url,
                   "--concurrency", str(self.concurrency), "--visibility-ms", str(self.visibility_ms),
                   "--consumer", f"worker{index}"]
        process = subprocess.Popen(command, env=self.env, preexec_fn=die_with_parent)
        logger.info("stage worker %d started (pid %d)", index, process.pid)
        return process

    async def start(self) -> None:
        for index in range(self.count):
            self.processes[index] = self._spawn(index)
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        delays = [self.backoff_s] * self.count
        while True:
            await asyncio.sleep(0.5)
            for index, process in enumerate(self.processes):
                if process is not None and process.poll() is not None:
                    logger.warning("stage worker %d (pid %d) exited with %s; restarting in %.1fs",
                                   index, process.pid, process.returncode, delays[index])
                    self.processes[index] = None
                    await asyncio.sleep(delays[index])
                    delays[index] = min(30.0, delays[index] * 2)
                    self.processes[index] = self._spawn(index)
                    self.restarts += 1
                elif process is not None:
                    delays[index] = self.backoff_s

    def alive(self) -> int:
        return sum(p is not None and p.poll() is None for p in self.processes)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in self.processes:
            if process is not None:
                try:
                    await asyncio.to_thread(process.wait, 10)
                except subprocess.TimeoutExpired:
                    process.kill()
