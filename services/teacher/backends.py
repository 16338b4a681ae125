"""The teacher's three backends behind one small interface.

- `ExpertBackend`: the built-in suite's scripted solver (`shared.tasks.expert`), state-aware; no model.
- `EngineBackend`: a model through the engine interface — in-process transformers, or any OpenAI-compatible
  server through token-id `/v1/completions` (`shared.models.openai_engine`). Agent turns and rollouts go
  through `RolloutRunner`, so prefixes are replayed and steps executed exactly as in student rollouts.
- `OpenAIBackend`: an `EngineBackend` whose free-text prompts (the judge's) go to `/v1/chat/completions`
  with a JSON-schema `response_format`, which vLLM turns into guided decoding.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import httpx

from shared.agent.execute import execute_step
from shared.agent.format import episode_messages, render_step
from shared.agent.rollout import RolloutRunner
from shared.agent.tokens import chat_token_ids
from shared.models.engine import Engine, PromptTooLongError
from shared.models.openai_engine import RemoteEngineError
from shared.observability import traced_async_client
from shared.schemas.agent import Episode, Step, Task
from shared.schemas.rollout import RolloutItem
from shared.schemas.sampling import SamplingParams
from shared.schemas.teacher import Cost
from shared.tasks.expert import expert_next_step
from services.teacher.execution import Executor

log = logging.getLogger("score.teacher")


class BackendError(RuntimeError):
    """The teacher model could not answer (server error, prompt too long, no model)."""


@dataclass
class Proposal:
    step: Step | None               # the teacher's next step; its observation is set when it was already executed
    cost: Cost = field(default_factory=Cost)


@dataclass
class Continuation:
    steps: list[Step]               # the whole episode: the given steps (re-executed) and the teacher's own
    final_answer: str | None
    cost: Cost = field(default_factory=Cost)
    stop_reason: str | None = None  # as `Episode.stop_reason`; `no_step` when the expert has nothing to add


@dataclass
class ChatReply:
    text: str
    cost: Cost = field(default_factory=Cost)


class TeacherBackend(ABC):
    kind: str = "abstract"
    model_name: str = ""
    has_model: bool = True

    def unsupported(self, task: Task) -> str | None:
        """Why this backend cannot correct `task`, or None when it can."""
        return None

    async def start(self) -> None:
        """Load or connect what the backend needs."""

    async def close(self) -> None:
        """Release threads and connections."""

    @abstractmethod
    async def propose(self, jobs: list[tuple[Task, list[Step]]]) -> list[Proposal]:
        """The teacher's next step after each (task, executed prefix), all in one batched call."""

    @abstractmethod
    async def continue_from(self, task: Task, steps: list[Step], *, max_turns: int) -> Continuation:
        """Replay `steps` in a fresh sandbox, then let the teacher act until a final answer or `max_turns`."""

    async def chat(self, messages: list[dict], *, max_tokens: int, json_schema: dict | None = None,
                   seed: int | None = None, temperature: float | None = None) -> ChatReply:
        """One free-text answer to a chat prompt (the judge's prompts); `temperature` None: the backend's own."""
        raise BackendError(f"the {self.kind} backend has no model to prompt")


class ExpertBackend(TeacherBackend):
    """The scripted solver: reads the task's `meta` (never shown to a model) and the prefix's observations."""

    kind = "expert"
    model_name = "expert"
    has_model = False

    def __init__(self, executor: Executor, tokenizer=None) -> None:
        self.executor = executor
        # The tokenizer a model teacher would use: the expert's steps are counted in it, so its spend compares.
        self.tokenizer = tokenizer

    def step_cost(self, task: Task, prefix: list[Step], step: Step) -> Cost:
        """What writing `step` after `prefix` would cost a model teacher: one call reading the whole episode so far
        (the chat template with the generation prompt), writing the step's canonical text and its end-of-turn."""
        if self.tokenizer is None:
            return Cost()
        prompt = chat_token_ids(self.tokenizer, episode_messages(task, prefix), add_generation_prompt=True)
        written = len(self.tokenizer.encode(render_step(step), add_special_tokens=False)) + 1
        return Cost(teacher_calls=1, teacher_tokens=written, teacher_prompt_tokens=len(prompt))

    def text_cost(self, messages: list[dict], text: str) -> Cost:
        """What answering a chat prompt with `text` would cost a model teacher."""
        if self.tokenizer is None:
            return Cost()
        prompt = chat_token_ids(self.tokenizer, messages, add_generation_prompt=True)
        written = len(self.tokenizer.encode(text, add_special_tokens=False)) + 1
        return Cost(teacher_calls=1, teacher_tokens=written, teacher_prompt_tokens=len(prompt))

    def unsupported(self, task: Task) -> str | None:
        if getattr(task, "family", None) in ("arith", "kb") and isinstance(getattr(task, "meta", None), dict):
            return None
        return ("the expert backend solves only built-in tasks (with `family` and `meta`); use a model backend "
                "(--engine transformers or openai) for other tasks")

    async def propose(self, jobs: list[tuple[Task, list[Step]]]) -> list[Proposal]:
        proposals = []
        for task, prefix in jobs:
            step = self._next(task, prefix)
            proposals.append(Proposal(step, self.step_cost(task, prefix, step) if step is not None else Cost()))
        return proposals

    async def continue_from(self, task: Task, steps: list[Step], *, max_turns: int) -> Continuation:
        def act(sandbox, replayed: list[Step], final_answer: str | None) -> Continuation:
            episode = list(replayed)
            stop_reason = None
            cost = Cost(sandbox_runs=1)
            for _ in range(max_turns):
                if final_answer is not None:
                    break
                step = self._next(task, episode)
                if step is None:
                    stop_reason = "no_step"
                    break
                cost = cost.add(self.step_cost(task, episode, step))
                outcome = execute_step(step, sandbox)
                episode.append(outcome.step)
                final_answer = outcome.final_answer
            if final_answer is not None:
                stop_reason = "final_answer"
            return Continuation(episode, final_answer, cost, stop_reason or "max_turns")

        return await self.executor.in_sandbox(steps, act)

    @staticmethod
    def _next(task: Task, prefix: list[Step]) -> Step | None:
        try:
            return expert_next_step(task, prefix)
        except ValueError:  # a prefix that already is the whole gold trajectory: nothing to add
            return None


def episode_cost(episode: Episode) -> Cost:
    """Calls, generated and prompt tokens of the model turns in an episode (from its loss mask)."""
    calls = generated = prompt = 0
    previous = 0
    for position, mask in enumerate(episode.loss_mask):
        if mask == 1:
            generated += 1
            if previous == 0:  # a model turn starts here; everything before it was that call's prompt
                calls += 1
                prompt += position
        previous = mask
    return Cost(teacher_calls=calls, teacher_tokens=generated, teacher_prompt_tokens=prompt, sandbox_runs=1)


class EngineBackend(TeacherBackend):
    """A teacher model behind the engine interface (transformers in-process, or an OpenAI-compatible server)."""

    def __init__(self, engine: Engine, runner: RolloutRunner, *, sampling: SamplingParams,
                 max_judge_tokens: int = 384) -> None:
        self.engine = engine
        self.runner = runner
        self.sampling = sampling
        self.max_judge_tokens = max_judge_tokens
        self.kind = engine.kind

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def propose(self, jobs: list[tuple[Task, list[Step]]]) -> list[Proposal]:
        # One turn per prefix, all started together: the engine batches the concurrent calls, and the
        # runner executes each step in a sandbox rebuilt from its prefix, so proposals come back executed.
        items = [RolloutItem(task=Task.model_validate(task.model_dump()), prefix_steps=prefix) for task, prefix in jobs]
        episodes = await self._run(items, max_turns=1) if items else []
        proposals = []
        for (_, prefix), episode in zip(jobs, episodes):
            step = episode.steps[len(prefix)] if len(episode.steps) > len(prefix) else None
            proposals.append(Proposal(step, episode_cost(episode)))
        return proposals

    async def continue_from(self, task: Task, steps: list[Step], *, max_turns: int) -> Continuation:
        item = RolloutItem(task=Task.model_validate(task.model_dump()), prefix_steps=steps)
        [episode] = await self._run([item], max_turns=max_turns)
        return Continuation(episode.steps, episode.final_answer, episode_cost(episode), episode.stop_reason)

    async def _run(self, items: list[RolloutItem], *, max_turns: int) -> list[Episode]:
        try:
            return await self.runner.run(items, n=1, max_turns=max_turns, sampling=self.sampling)
        except (httpx.HTTPError, RemoteEngineError) as exc:
            raise BackendError(f"the teacher model failed: {exc}") from exc

    async def chat(self, messages: list[dict], *, max_tokens: int, json_schema: dict | None = None,
                   seed: int | None = None, temperature: float | None = None) -> ChatReply:
        prompt = chat_token_ids(self.engine.tokenizer, messages, add_generation_prompt=True)
        sampling = self.sampling.model_copy(update={
            "max_tokens": max_tokens, "seed": seed,
            "temperature": self.sampling.temperature if temperature is None else temperature,
        })
        try:
            output = await self.engine.generate(prompt, sampling)
        except PromptTooLongError as exc:
            raise BackendError(f"the prompt does not fit the teacher's context: {exc}") from exc
        except (httpx.HTTPError, RemoteEngineError) as exc:
            raise BackendError(f"the teacher model failed: {exc}") from exc
        cost = Cost(teacher_calls=1, teacher_tokens=len(output.token_ids), teacher_prompt_tokens=len(prompt))
        return ChatReply(output.text, cost)


class OpenAIBackend(EngineBackend):
    """A remote teacher (vLLM, SGLang, a hosted API): judge prompts as chat calls with JSON-schema output."""

    def __init__(self, engine: Engine, runner: RolloutRunner, *, base_url: str, api_key: str | None,
                 sampling: SamplingParams, max_judge_tokens: int = 384, timeout_s: float = 300.0) -> None:
        super().__init__(engine, runner, sampling=sampling, max_judge_tokens=max_judge_tokens)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = traced_async_client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self._schema_supported = True

    async def close(self) -> None:
        await self._client.aclose()
        await super().close()

    async def chat(self, messages: list[dict], *, max_tokens: int, json_schema: dict | None = None,
                   seed: int | None = None, temperature: float | None = None) -> ChatReply:
        body = {"model": self.engine.model_name, "messages": messages, "max_tokens": max_tokens, "seed": seed,
                "temperature": self.sampling.temperature if temperature is None else temperature}
        if json_schema is not None and self._schema_supported:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "judgement", "schema": json_schema}}
        try:
            response = await self._client.post("/chat/completions", json=body)
            if response.status_code == 400 and "response_format" in body:
                # Servers without structured output refuse the field; the parser copes with free text.
                log.info("teacher server refused response_format; continuing without JSON-schema output")
                self._schema_supported = False
                body.pop("response_format")
                response = await self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise BackendError(f"the teacher server is unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise BackendError(f"the teacher server answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            payload = response.json()
            text = payload["choices"][0]["message"]["content"] or ""
            usage = payload.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError("the teacher server sent a malformed chat completion") from exc
        cost = Cost(teacher_calls=1, teacher_tokens=int(usage.get("completion_tokens") or 0),
                    teacher_prompt_tokens=int(usage.get("prompt_tokens") or 0))
        return ChatReply(text, cost)

