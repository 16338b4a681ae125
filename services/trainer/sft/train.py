"""The SFT training process: one job directory in, one published checkpoint out.

The trainer service starts it for each job; it can also be run by hand on a prepared job directory:

    python -m services.trainer.sft.train --job-dir $SCORE_HOME/trainer/jobs/<id>
    torchrun --standalone --nproc_per_node 2 -m services.trainer.sft.train --job-dir $SCORE_HOME/trainer/jobs/<id>

Under torchrun it trains data-parallel (DDP; gloo on CPU, nccl on GPU with one process per device): every
rank rebuilds the same step schedule, takes micro-batches rank, rank+N, ... of each step, and gradients are
averaged at the last micro-batch; rank 0 alone writes progress, intermediate states and the checkpoint.
The loss of a step is the sum over its trained tokens divided by the trained tokens of the whole global
step, so N processes with gradient_accumulation_steps=k follow the same curve as one process with N*k.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from shared.checkpoints import CheckpointStore
from shared.model_card import TrainingFacts, training_card
from shared.fsutil import file_lock, write_json_atomic
from shared.processes import die_with_parent
from shared.models.loading import load_tokenizer, load_trainable_causal_lm
from services.trainer.sft.data import (
    build_schedule, collate_packed, collate_padded, read_conversations, tokenize_conversation,
)
from services.trainer.optim import build_optimizer, build_scheduler
from services.trainer.sft.loss import PackedCausalLMLoss
from services.trainer.sft.spec import DATASET, PROGRESS, RESULT, RUN_LOCK, STATE_DIR, JobSpec
from services.trainer.tracking import MetricsTracker
from services.trainer.sft.state import latest_state_dir, load_state, rng_state, save_state

log = logging.getLogger("score.trainer.sft")


class Dist:
    """Rank, world size and device of this process; a single process is rank 0 of 1."""

    def __init__(self, device_choice: str, cpu_threads: int | None = None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_choice.startswith("cuda") or (device_choice == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
        else:
            self.device = torch.device("cpu")
            # N processes share the cores: more threads than cores each only adds contention.
            torch.set_num_threads(cpu_threads or max(1, (os.cpu_count() or 1) // self.world))
        if self.world > 1:
            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class Progress:
    """Append-only JSON lines the service tails (rank 0 only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.handle = path.open("a", encoding="utf-8") if enabled else None

    def emit(self, type_: str, **fields) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps({"type": type_, "time": time.time(), **fields}) + "\n")
            self.handle.flush()


def load_model(spec: JobSpec, device: torch.device):
    """The model to train (see `load_trainable_causal_lm`: a plain model, a new adapter or a continued one)."""
    hp = spec.hyperparameters
    # fp32 master weights everywhere; on CUDA the forward runs under bf16 autocast.
    model = load_trainable_causal_lm(spec.base_path, hp, device=device, seed=hp.seed)
    model.config.use_cache = False
    return model.train()


def _to(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def resolve_layout(layout: str, model) -> str:
    """`auto` packs only where the attention kernel is varlen-aware (flash-attention)."""
    if layout != "auto":
        return layout
    implementation = getattr(model.config, "_attn_implementation", None) or ""
    return "packed" if implementation.startswith("flash_attention") else "bucketed"


def publish(spec: JobSpec, model, tokenizer, metrics: dict, data: dict):
    """Publish the trained model (merged, full, or the PEFT adapter) with its model card; `data` describes
    what it was trained on, for the card."""
    hp = spec.hyperparameters
    adapter = hp.lora and not hp.merge_lora  # published as the PEFT adapter, not merged into its base
    facts = TrainingFacts(method="sft", job=spec.job_id, parent=spec.base_label, parent_path=spec.base_path,
                          adapter=adapter, data=data, hyperparameters=hp.model_dump(mode="json"), metrics=metrics)
    store = CheckpointStore(Path(spec.checkpoints_dir))
    options = dict(parent=spec.base_label, job_id=spec.job_id, metrics=metrics,
                   card=lambda ref: training_card(ref, facts))
    weights = model.merge_and_unload() if hp.lora and hp.merge_lora else model
    return store.save_model(spec.output_name, weights, tokenizer, **options)


def train(job_dir: Path) -> int:
    spec = JobSpec.load(job_dir)
    hp = spec.hyperparameters
    if (job_dir / RESULT).is_file():  # published before the service noticed: nothing left to do
        return 0
    ctx = Dist(hp.device, hp.cpu_threads)
    progress = Progress(job_dir / PROGRESS, ctx.main)
    lock = file_lock(job_dir / RUN_LOCK) if ctx.main else contextlib.nullcontext()
    with lock:
        try:
            return _train(job_dir, spec, ctx, progress)
        finally:
            ctx.close()


def accumulate_gradients(loss_module, micro_batches, collate, *, ctx: Dist, autocast, loss_tokens: int):
    """Forward and backward this rank's share of one step's micro-batches; returns (loss sum, computed slots).

    Ranks take micro-batches rank, rank+N, ...; DDP all-reduces at each rank's last one. Gradients come out as
    the mean over the global step's `loss_tokens` trained tokens, however they were split.
    """
    mine = [(mb, 1.0) for mb in micro_batches[ctx.rank :: ctx.world]]
    if not mine:  # the epoch's last step has fewer micro-batches than ranks: join the all-reduce with zero weight
        mine = [(micro_batches[0], 0.0)]
    # DDP averages gradients over ranks; scaling by world makes the result the global token mean.
    scale = ctx.world / max(1, loss_tokens)
    loss_sum, slots = 0.0, 0
    for index, (indices, weight) in enumerate(mine):
        batch = collate(indices)
        slots += batch.slots if weight else 0
        sync = index == len(mine) - 1 or ctx.world == 1
        no_sync = contextlib.nullcontext() if sync else loss_module.no_sync()
        with no_sync, autocast:
            summed = loss_module(
                batch.input_ids.to(ctx.device), batch.labels.to(ctx.device),
                position_ids=_to(batch.position_ids, ctx.device), attention_mask=_to(batch.attention_mask, ctx.device),
            )
        (summed * (scale * weight)).backward()
        loss_sum += float(summed.detach()) * weight
    return loss_sum, slots


def _train(job_dir: Path, spec: JobSpec, ctx: Dist, progress: Progress) -> int:
    hp = spec.hyperparameters
    torch.manual_seed(hp.seed)
    tokenizer = load_tokenizer(spec.base_path)
    conversations = read_conversations(job_dir / DATASET)
    examples = [tokenize_conversation(tokenizer, c, hp.max_seq_length) for c in conversations]
    lengths = [len(e) for e in examples]
    loss_counts = [sum(e.loss_mask[1:]) for e in examples]
    model = load_model(spec, ctx.device)
    layout = resolve_layout(hp.layout, model)
    micro_per_step = hp.gradient_accumulation_steps * ctx.world
    plan = dict(micro_batch_tokens=hp.micro_batch_tokens, micro_batches_per_step=micro_per_step, seed=hp.seed,
                layout=layout)
    schedule = build_schedule(lengths, num_epochs=hp.num_epochs, max_steps=hp.max_steps, **plan)
    total_steps = len(schedule)
    steps_per_epoch = max(1, len(build_schedule(lengths, num_epochs=1, max_steps=None, **plan)))
    slots_per_epoch = sum(
        len(mb) * max(lengths[i] for i in mb) if layout == "bucketed" else sum(lengths[i] for i in mb)
        for step in build_schedule(lengths, num_epochs=1, max_steps=None, **plan) for mb in step
    )

    def collate(indices):
        if layout == "packed":
            return collate_packed(examples, indices)
        return collate_padded(examples, indices, tokenizer.pad_token_id)

    optimizer = build_optimizer(model, hp, fused=ctx.device.type == "cuda")
    scheduler = build_scheduler(optimizer, total_steps=total_steps, hp=hp)
    state_root = job_dir / STATE_DIR
    start_step, tokens_seen = 0, 0
    resumed_from = None
    state_dir = latest_state_dir(state_root)
    if state_dir is not None:
        counters = load_state(state_dir, model=model, optimizer=optimizer, scheduler=scheduler, rank=ctx.rank)
        start_step, tokens_seen = counters["step"], counters.get("tokens_seen", 0)
        resumed_from = start_step
    loss_module = PackedCausalLMLoss(model)
    if ctx.world > 1:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    total_tokens = sum(lengths)
    truncated = sum(1 for e in examples if len(e) == hp.max_seq_length)
    progress.emit(
        "started", step=start_step, total_steps=total_steps, resumed_from_step=resumed_from, nproc=ctx.world,
        examples=len(examples), tokens_per_epoch=total_tokens, layout=layout,
        padding_share=round(1 - total_tokens / max(1, slots_per_epoch), 4),
        assistant_share=round(sum(loss_counts) / max(1, total_tokens), 4),
        truncated=truncated,
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" else contextlib.nullcontext()
    )
    window_tokens, window_slots, window_time, window_loss, window_loss_tokens = 0, 0, 0.0, 0.0, 0
    metrics: dict = {}
    log_dir = Path(spec.tensorboard_dir) if spec.tensorboard_dir else job_dir / "tensorboard"
    tracker = MetricsTracker(hp.report_to if ctx.main else [], log_dir)  # rank 0 speaks for the job
    for step in range(start_step, total_steps):
        started = time.perf_counter()
        micro_batches = schedule[step]
        step_loss_tokens = sum(loss_counts[i] for mb in micro_batches for i in mb)
        step_tokens = sum(lengths[i] for mb in micro_batches for i in mb)
        loss_sum, step_slots = accumulate_gradients(
            loss_module, micro_batches, collate, ctx=ctx, autocast=autocast, loss_tokens=step_loss_tokens
        )
        grad_norm = None
        if hp.max_grad_norm is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm))
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss_sum = ctx.sum(loss_sum)  # a CPU-GPU sync point, once per step
        step_slots = ctx.sum(step_slots)
        tokens_seen += step_tokens
        window_slots += step_slots
        window_tokens += step_tokens
        window_time += time.perf_counter() - started
        window_loss += loss_sum
        window_loss_tokens += step_loss_tokens
        done = step + 1
        if done % hp.log_every_steps == 0 or done == total_steps:
            metrics = {
                "loss": window_loss / max(1, window_loss_tokens),
                "tokens_per_s": window_tokens / max(window_time, 1e-9),
                "learning_rate": learning_rate, "grad_norm": grad_norm, "epoch": round(done / steps_per_epoch, 4),
                "tokens_seen": tokens_seen, "padding_share": round(1 - window_tokens / max(1, window_slots), 4),
            }
            progress.emit("progress", step=done, total_steps=total_steps, metrics=metrics,
                          step_time_s=window_time / hp.log_every_steps)
            tracker.log(done, metrics)
            window_tokens, window_slots, window_time, window_loss, window_loss_tokens = 0, 0, 0.0, 0.0, 0
        if done % hp.save_every_steps == 0 and done < total_steps:
            rng_states = ctx.gather(rng_state())
            if ctx.main:
                path = save_state(state_root, step=done, model=model, optimizer=optimizer, scheduler=scheduler,
                                  rng_states=rng_states, counters={"tokens_seen": tokens_seen})
                progress.emit("checkpoint", step=done, path=str(path))
            ctx.barrier()

    tracker.close()
    if ctx.main:
        final = {k: v for k, v in metrics.items() if v is not None}
        final.update(steps=total_steps, examples=len(examples), nproc=ctx.world)
        model.eval()
        data = {"dataset": spec.dataset_name or "rows given inline", "conversations": len(examples),
                "tokens per epoch": total_tokens, "trained assistant tokens per epoch": sum(loss_counts),
                "truncated to max_seq_length": truncated, "optimizer steps": total_steps}
        ref = publish(spec, model, tokenizer, final, data)
        checkpoint = ref.identity().model_dump()
        write_json_atomic(job_dir / RESULT, {"checkpoint": checkpoint, "metrics": final})
        progress.emit("published", step=total_steps, checkpoint=checkpoint, metrics=final)
    ctx.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-dir", required=True, type=Path, help="a job directory written by the trainer service")
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s rank=%(process)d %(message)s")
    return train(args.job_dir)


if __name__ == "__main__":
    sys.exit(main())
