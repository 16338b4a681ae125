"""Agent episodes: the model acts, the sandbox executes, observations come back.

Each episode runs as its own coroutine; their model calls reach the engine
concurrently and are batched there. Sandboxes run in threads. Token data is
assembled as the episode goes: prompt and tool turns are masked out (0), the
model's own tokens are kept with their behaviour log-probabilities (1).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.agent.execute import StepOutcome, execute_step, replay_steps
from shared.agent.format import episode_messages, parse_turn, tool_turn
from shared.agent.tokens import chat_token_ids, closing_ids, tool_turn_ids
from shared.models.engine import Engine, GenerationOutput, PromptTooLongError
from shared.schemas.agent import Episode, Step, Task
from shared.schemas.rollout import RolloutItem
from shared.schemas.sampling import SamplingParams

log = logging.getLogger("score.rollout")
_TIMEOUT_OBSERVATION = "Error: not run: the episode's time limit was reached."


@dataclass
class _State:
    task: Task
    steps: list[Step]
    n_prefix: int
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_length: int = 0
    final_answer: str | None = None
    stop_reason: str | None = None
    versions: set[int] = field(default_factory=set)

    def add(self, ids: list[int], *, generated: bool, logprobs: list[float] | None = None) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([1 if generated else 0] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))


def _turn_seed(seed: int | None, *parts: int) -> int | None:
    """A distinct, reproducible seed per (item, sample, turn) derived from the request's seed."""
    if seed is None:
        return None
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class RolloutRunner:
    """Runs episodes for one model engine with one sandbox factory."""

    def __init__(
        self,
        engine: Engine,
        sandbox_factory: Callable[[], object],
        *,
        max_concurrent_episodes: int = 64,
        max_concurrent_executions: int = 8,
        episode_timeout_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.sandbox_factory = sandbox_factory
        # Wall-clock limit of one episode from its start, prefix replay included. Checked before every
        # replayed step, model turn and code execution; a model turn waits at most until it. What overruns
        # it is one code cell, bounded by the sandbox's step timeout.
        self.episode_timeout_s = episode_timeout_s
        self._episodes = asyncio.Semaphore(max_concurrent_episodes)
        self._executions = asyncio.Semaphore(max_concurrent_executions)

    async def run(
        self, items: list[RolloutItem], *, n: int, max_turns: int, sampling: SamplingParams
    ) -> list[Episode]:
        """Episodes in item order, `n` per item."""
        jobs = [
            self._episode(item, max_turns=max_turns, sampling=sampling, seed_parts=(i, k))
            for i, item in enumerate(items)
            for k in range(n)
        ]
        return list(await asyncio.gather(*jobs))

    async def _episode(
        self, item: RolloutItem, *, max_turns: int, sampling: SamplingParams, seed_parts: tuple[int, int]
    ) -> Episode:
        async with self._episodes:
            sandbox = self.sandbox_factory()
            try:
                return await self._play(item, sandbox, max_turns=max_turns, sampling=sampling, seed_parts=seed_parts)
            finally:
                await asyncio.to_thread(sandbox.close)

    async def _play(self, item, sandbox, *, max_turns, sampling, seed_parts) -> Episode:
        tokenizer = self.engine.tokenizer
        deadline = None if self.episode_timeout_s is None else time.monotonic() + self.episode_timeout_s
        async with self._executions:
            steps, final_answer = await asyncio.to_thread(
                replay_steps, list(item.prefix_steps), sandbox, deadline=deadline
            )
        state = _State(task=item.task, steps=steps, n_prefix=len(steps), final_answer=final_answer)
        prompt = chat_token_ids(tokenizer, episode_messages(item.task, steps), add_generation_prompt=True)
        state.add(prompt, generated=False)
        state.prompt_length = len(prompt)
        if final_answer is not None:
            state.stop_reason = "final_answer"
        elif len(steps) < len(item.prefix_steps):
            state.stop_reason = "timeout"
        elif max_turns == 0:
            state.stop_reason = "prefix_only"

        turn = 0
        while state.stop_reason is None:
            if turn >= max_turns:
                state.stop_reason = "max_turns"
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                state.stop_reason = "timeout"
                break
            turn_sampling = sampling.model_copy(update={"seed": _turn_seed(sampling.seed, *seed_parts, turn)})
            try:
                output = await asyncio.wait_for(self.engine.generate(state.token_ids, turn_sampling), remaining)
            except PromptTooLongError:
                state.stop_reason = "max_tokens"
                break
            except asyncio.TimeoutError:
                state.stop_reason = "timeout"
                break
            turn += 1
            await self._take_turn(state, sandbox, output, last_turn=turn >= max_turns, deadline=deadline)
        return self._episode_of(state)

    async def _take_turn(self, state: _State, sandbox, output: GenerationOutput, *, last_turn: bool,
                         deadline: float | None = None) -> None:
        tokenizer = self.engine.tokenizer
        state.versions.add(output.policy_version)
        state.add(output.token_ids, generated=True, logprobs=output.logprobs)
        emitted_eos = bool(output.token_ids) and output.token_ids[-1] == tokenizer.eos_token_id
        step = parse_turn(output.text, is_first=not state.steps)
        async with self._executions:
            if deadline is not None and time.monotonic() >= deadline:  # waited too long for an execution slot
                outcome = StepOutcome(step.model_copy(update={"observation": _TIMEOUT_OBSERVATION}), None)
                state.stop_reason = "timeout"
            else:
                outcome = await asyncio.to_thread(execute_step, step, sandbox)
        state.steps.append(outcome.step)
        if outcome.final_answer is not None:
            state.final_answer, state.stop_reason = outcome.final_answer, "final_answer"
        if state.stop_reason is not None or last_turn:
            state.add(closing_ids(tokenizer, model_emitted_eos=emitted_eos), generated=False)
            return
        follow_up = tool_turn(outcome.step) or ""
        state.add(tool_turn_ids(tokenizer, follow_up, model_emitted_eos=emitted_eos), generated=False)

    def _episode_of(self, state: _State) -> Episode:
        if len(state.versions) > 1:  # the service's version gate makes this impossible; say so loudly if not
            raise RuntimeError(f"episode mixed policy versions {sorted(state.versions)}")
        version = next(iter(state.versions)) if state.versions else self.engine.policy_version
        return Episode(
            task_id=state.task.id, steps=state.steps, final_answer=state.final_answer,
            finished=state.final_answer is not None, stop_reason=state.stop_reason, n_prefix_steps=state.n_prefix,
            token_ids=state.token_ids, prompt_length=state.prompt_length, loss_mask=state.loss_mask,
            logprobs=state.logprobs, policy_version=version,
        )
