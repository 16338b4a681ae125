"""RL sessions: a policy kept in memory with its optimizer, stepped by GRPO, published version by version.

On disk, under `SCORE_HOME/trainer/rl/<id>/`:
    session.json   what the session is and where it stands: the create request, base, policy version,
                   steps, latest checkpoint, last step's id and response (for idempotent retries)
    optimizer.pt   AdamW state after the latest step (when `save_optimizer_state`), tagged with its version

The weights themselves are the published checkpoints (`CheckpointStore`): full weights, or with
`hyperparameters.lora` the LoRA adapter directory (never merged: what vLLM loads at run time). A restarted
trainer reads session.json on first use and reloads the policy lazily on the next step: from the latest
checkpoint (or the base before any step), with the optimizer state when its version matches. A step publishes
the checkpoint first and writes session.json last, so a crash in between leaves an unused checkpoint
version and the session on its previous version, never a session pointing at missing weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from services.trainer.grpo.step import grpo_step
from services.trainer.optim import build_optimizer
from services.trainer.tracking import MetricsTracker, tensorboard_dir
from shared.checkpoints import CheckpointStore, resolve_model
from shared.errors import ConflictError, NotFoundError, UnprocessableError
from shared.fsutil import write_json_atomic
from shared.model_card import TrainingFacts, training_card
from shared.models.loading import checkpoint_dir, load_causal_lm, load_tokenizer, load_trainable_causal_lm
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.rl import (
    RLSessionCreate,
    RLSessionInfo,
    RLSessionList,
    RLStepRequest,
    RLStepResponse,
    SESSION_ID,
)
from shared.settings import Settings

log = logging.getLogger("score.trainer.rl")

SESSION_FILE = "session.json"
OPTIMIZER_FILE = "optimizer.pt"


class SessionRecord(BaseModel):
    """session.json: everything needed to continue a session in a fresh process."""

    id: str
    state: str = "active"
    request: RLSessionCreate
    base: str
    base_path: str
    output_name: str
    policy_version: int
    steps: int = 0
    prompts: int = 0    # rollout groups trained on, all steps together (for the model card)
    samples: int = 0    # rollouts trained on, all steps together
    checkpoint: Checkpoint | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    last_metrics: dict[str, float] = Field(default_factory=dict)
    last_step_id: str | None = None
    last_response: RLStepResponse | None = None


@dataclass
class _Live:
    """A session's in-process state: its step lock and, once a step ran, the model and optimizer."""

    record: SessionRecord
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    policy: object = None
    tokenizer: object = None
    optimizer: torch.optim.Optimizer | None = None
    ref_model: object = None
    tracker: MetricsTracker | None = None

    def unload(self) -> None:
        self.policy = self.tokenizer = self.optimizer = self.ref_model = None
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


class RLSessions:
    """Create, look up, step and close RL sessions; the handler layer of `/v1/rl/*` (no HTTP here)."""

    def __init__(self, *, settings: Settings, store: CheckpointStore, device: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.root = settings.home / "trainer" / "rl"
        self._live: dict[str, _Live] = {}
        self._create_lock = asyncio.Lock()

    # ---- sessions --------------------------------------------------------------------------------
    async def create(self, body: RLSessionCreate) -> tuple[RLSessionInfo, bool]:
        """(the session, True when it was created now); an existing id with the same body is returned as is."""
        session_id = body.session_id or uuid.uuid4().hex[:16]
        output_name = body.output_name or f"rl-{session_id}"
        request = body.model_copy(update={"session_id": session_id, "output_name": output_name})
        async with self._create_lock:
            existing = self._find(session_id)
            if existing is not None:
                if existing.record.request != request:
                    raise ConflictError(
                        f"RL session {session_id!r} exists with a different body; choose another session_id",
                        param="body.session_id",
                    )
                return self._info(existing), False
            try:
                # off the event loop: the built-in student is built on first use on a fresh machine
                base_path, base_label = await asyncio.to_thread(resolve_model, body.base, home=self.settings.home,
                                                               roots=self.settings.path_roots)
                checkpoint_dir(base_path)
            except (KeyError, ValueError, FileNotFoundError) as exc:
                raise UnprocessableError(str(exc).strip("'\""), param="body.base") from exc
            record = SessionRecord(
                id=session_id, request=request, base=base_label, base_path=str(base_path),
                output_name=request.output_name, policy_version=body.initial_policy_version,
            )
            self._save(record)
            live = self._live[session_id] = _Live(record)
        log.info("rl session created id=%s base=%s output=%s", session_id, base_label, request.output_name)
        return self._info(live), True

    def get(self, session_id: str) -> RLSessionInfo:
        return self._info(self._require(session_id))

    def list(self) -> RLSessionList:
        ids = sorted(p.parent.name for p in self.root.glob(f"*/{SESSION_FILE}")) if self.root.is_dir() else []
        sessions = [self._info(live) for live in (self._find(i) for i in ids) if live is not None]
        return RLSessionList(sessions=sorted(sessions, key=lambda s: s.created_at, reverse=True))

    async def close(self, session_id: str) -> RLSessionInfo:
        """Release the policy's memory and refuse further steps; published checkpoints stay."""
        live = self._require(session_id)
        async with live.lock:
            live.unload()
            live.record.state = "closed"
            live.record.updated_at = time.time()
            self._save(live.record)
            (self._dir(session_id) / OPTIMIZER_FILE).unlink(missing_ok=True)
        _free_device_memory(self.device)
        return self._info(live)

    def gauges(self) -> dict[str, dict[str, float]]:
        """Per session in this process: policy version, steps and the latest step's headline metrics (Prometheus)."""
        values = {}
        for session_id, live in self._live.items():
            record = live.record
            values[session_id] = {"policy_version": float(record.policy_version), "steps": float(record.steps)}
            for name in ("reward/mean", "loss", "grad_norm", "tokens_per_s"):
                if name in record.last_metrics:
                    values[session_id][name] = record.last_metrics[name]
        return values

    # ---- steps -----------------------------------------------------------------------------------
    async def step(self, session_id: str, body: RLStepRequest) -> RLStepResponse:
        live = self._require(session_id)
        async with live.lock:  # one step at a time per session: versions advance in order
            record = live.record
            if record.state != "active":
                raise ConflictError(
                    f"RL session {session_id!r} is {record.state}; open a new session", param="path.session_id"
                )
            if body.step_id is not None and body.step_id == record.last_step_id and record.last_response is not None:
                return record.last_response
            self._check_versions(body, record)
            work = asyncio.ensure_future(asyncio.to_thread(self._apply, live, body))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # The caller went away mid-step. The thread cannot be stopped: hold the lock until it has
                # published, so no other step overlaps it; a retry with the same step_id gets its response.
                with contextlib.suppress(Exception):
                    await work
                raise
            except UnprocessableError:
                raise
            except Exception:
                # The in-memory policy may be half-updated: reload it from the last published version.
                live.unload()
                raise

    def _check_versions(self, body: RLStepRequest, record: SessionRecord) -> None:
        coef = record.request.hyperparameters.teacher_kl_coef
        oldest = record.policy_version - record.request.hyperparameters.max_staleness
        for g, group in enumerate(body.groups):
            for s, sample in enumerate(group.samples):
                if coef > 0 and sample.teacher_logprobs is None:
                    raise UnprocessableError(
                        f"the session trains on the reverse KL to the teacher (teacher_kl_coef={coef}) but this sample "
                        "has no teacher_logprobs; score it with the teacher's POST /v1/logprobs",
                        param=f"body.groups.{g}.samples.{s}.teacher_logprobs",
                    )
                param = f"body.groups.{g}.samples.{s}.policy_version"
                if sample.policy_version < oldest:
                    raise ConflictError(
                        f"sample from policy_version {sample.policy_version} is stale: the session is at version "
                        f"{record.policy_version} and accepts versions >= {oldest} (max_staleness="
                        f"{record.request.hyperparameters.max_staleness}); roll out again with the current weights",
                        param=param,
                    )
                if sample.policy_version > record.policy_version:
                    raise ConflictError(
                        f"sample claims policy_version {sample.policy_version}, newer than the session's "
                        f"{record.policy_version}; it was not produced by this session's weights",
                        param=param,
                    )

    def _apply(self, live: _Live, body: RLStepRequest) -> RLStepResponse:
        """The step itself, in a worker thread: load if needed, update, publish, persist."""
        record, hp = live.record, live.record.request.hyperparameters
        self._ensure_loaded(live)
        self._check_tokens(live, body)
        groups = [group.samples for group in body.groups]
        pad_id = live.tokenizer.pad_token_id if live.tokenizer.pad_token_id is not None else 0
        samples = [s for group in groups for s in group]
        # Samples from the version the trainer holds were scored by these very weights: their logprobs are checked.
        on_policy = [s.policy_version == record.policy_version for s in samples]
        metrics = grpo_step(live.policy, live.optimizer, groups, hp, pad_id=pad_id, ref_model=live.ref_model,
                            on_policy=on_policy)
        version = record.policy_version + 1
        metrics["policy_version"] = float(version)
        metrics["staleness/mean"] = sum(record.policy_version - s.policy_version for s in samples) / len(samples)

        started = time.perf_counter()
        parent = record.checkpoint.reference if record.checkpoint else record.base
        parent_path = record.checkpoint.path if record.checkpoint else record.base_path
        prompts, samples_total = record.prompts + len(groups), record.samples + len(samples)
        facts = TrainingFacts(
            method="grpo", job=f"rl:{record.id}", parent=parent, parent_path=parent_path, adapter=hp.lora,
            data={"RL session": record.id, "session step": record.steps + 1, "policy version": version,
                  "prompts this step": len(groups), "rollouts this step": len(samples),
                  "generated tokens this step": sum(sum(s.loss_mask) for s in samples),
                  "prompts over the session": prompts, "rollouts over the session": samples_total},
            hyperparameters=hp.model_dump(mode="json"), metrics=metrics,
        )
        ref = self.store.save_model(
            record.output_name, live.policy, live.tokenizer,
            parent=parent, job_id=f"rl:{record.id}", metrics={**metrics, "policy_version": version},
            card=lambda published: training_card(published, facts),
        )
        if record.request.save_optimizer_state:
            _save_torch_atomic(self._dir(record.id) / OPTIMIZER_FILE, {
                "policy_version": version, "optimizer": live.optimizer.state_dict(),
            })
        metrics["publish_time_s"] = time.perf_counter() - started
        if live.tracker is None:
            live.tracker = MetricsTracker(hp.report_to, tensorboard_dir(self.settings.home, record.output_name, "rl"))
        live.tracker.log(record.steps + 1, metrics)

        checkpoint = ref.identity()
        response = RLStepResponse(
            session_id=record.id, step=record.steps + 1, policy_version=version, checkpoint=checkpoint, metrics=metrics,
        )
        record.policy_version, record.steps, record.checkpoint = version, record.steps + 1, checkpoint
        record.prompts, record.samples = prompts, samples_total
        record.last_metrics, record.last_step_id, record.last_response = metrics, body.step_id, response
        record.updated_at = time.time()
        self._save(record)
        log.info(
            "rl step session=%s version=%d reward=%.3f loss=%.4f tokens_per_s=%.0f checkpoint=%s/v%d",
            record.id, version, metrics["reward/mean"], metrics["loss"], metrics["tokens_per_s"], ref.name, ref.version,
        )
        return response

    def _ensure_loaded(self, live: _Live) -> None:
        if live.policy is not None:
            return
        record, hp = live.record, live.record.request.hyperparameters
        source = record.checkpoint.path if record.checkpoint else record.base_path
        # fp32 master weights on every device: AdamW on bf16 weights loses small updates (lr ~1e-6). With lora,
        # the latest published adapter is continued, so a restart resumes the adapter the session had trained.
        policy = load_trainable_causal_lm(source, hp, device=self.device)
        tokenizer = load_tokenizer(source)
        # Only the trained tensors (all weights, or the adapter's), grouped and ordered as a reload rebuilds them,
        # so the saved AdamW state fits.
        optimizer = build_optimizer(policy, hp)
        saved = self._dir(record.id) / OPTIMIZER_FILE
        if record.request.save_optimizer_state and saved.is_file():
            state = torch.load(saved, map_location=self.device, weights_only=True)
            if state.get("policy_version") == record.policy_version:
                try:
                    optimizer.load_state_dict(state["optimizer"])
                except ValueError as exc:  # saved by a trainer that grouped the parameters otherwise
                    log.warning("rl session=%s optimizer state does not fit the parameter groups (%s): starting "
                                "fresh moments", record.id, exc)
            else:
                log.warning("rl session=%s optimizer state is from version %s, not %d: starting fresh moments",
                            record.id, state.get("policy_version"), record.policy_version)
        ref_model = None
        if hp.beta > 0.0:
            # The session's base as an inference model (an adapter base comes merged), whatever the policy trains.
            ref_model, _ = load_causal_lm(record.base_path, device=str(self.device), dtype=torch.float32)
            ref_model.requires_grad_(False)
        live.policy, live.tokenizer, live.optimizer, live.ref_model = policy, tokenizer, optimizer, ref_model
        log.info("rl session=%s policy loaded from %s (version %d)", record.id, source, record.policy_version)

    @staticmethod
    def _check_tokens(live: _Live, body: RLStepRequest) -> None:
        config = live.policy.config
        vocab = int(config.vocab_size)
        context = int(getattr(config, "max_position_embeddings", 0) or 0)
        for g, group in enumerate(body.groups):
            for s, sample in enumerate(group.samples):
                where = f"body.groups.{g}.samples.{s}.token_ids"
                if max(sample.token_ids) >= vocab:
                    raise UnprocessableError(
                        f"token id {max(sample.token_ids)} is outside the policy's vocabulary of {vocab}; the rollout "
                        "was not tokenized for this model", param=where,
                    )
                if context and len(sample.token_ids) > context:
                    raise UnprocessableError(
                        f"{len(sample.token_ids)} tokens exceed the policy's context of {context}", param=where,
                    )

    # ---- records ---------------------------------------------------------------------------------
    def _dir(self, session_id: str) -> Path:
        return self.root / session_id

    def _save(self, record: SessionRecord) -> None:
        write_json_atomic(self._dir(record.id) / SESSION_FILE, record.model_dump(mode="json"))

    def _find(self, session_id: str) -> _Live | None:
        """The live session, else one left on disk by an earlier process (its policy is loaded on the next step)."""
        live = self._live.get(session_id)
        if live is not None:
            return live
        path = self._dir(session_id) / SESSION_FILE
        if not path.is_file():
            return None
        live = self._live[session_id] = _Live(SessionRecord.model_validate_json(path.read_text()))
        return live

    def _require(self, session_id: str) -> _Live:
        live = self._find(session_id) if SESSION_ID.match(session_id) else None  # never a path outside root
        if live is None:
            raise NotFoundError(f"no RL session {session_id!r}", param="path.session_id")
        return live

    @staticmethod
    def _info(live: _Live) -> RLSessionInfo:
        record = live.record
        return RLSessionInfo(
            id=record.id, state=record.state, base=record.base, base_path=record.base_path,
            output_name=record.output_name, initial_policy_version=record.request.initial_policy_version,
            policy_version=record.policy_version, steps=record.steps,
            hyperparameters=record.request.hyperparameters, save_optimizer_state=record.request.save_optimizer_state,
            checkpoint=record.checkpoint, loaded=live.policy is not None, created_at=record.created_at,
            updated_at=record.updated_at, last_metrics=record.last_metrics,
        )


def _save_torch_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
