"""Build-time SFT of the built-in teacher on expert trajectories of the built-in suite.

The teacher should solve held-out tasks of both families by itself, greedily, in the agent format, having learnt
from the scripted expert (`shared.tasks.expert`) after induction pre-training (`shared.models.induction`). This
module turns distinct train-split tasks into token sequences exactly as a rollout feeds them to the model, runs
a small SFT loop on them (loss on the model's own turns only), and checks episodes under teacher forcing.
How far the current recipe gets (short of the targets) is measured in docs/teacher.md.

Token-exactness. A rollout starts from `chat_token_ids(system + question, generation prompt)`, appends the
tokens the model generates (its turn and `<|im_end|>`), then `tool_turn_ids` of the observation that follows;
`episode_example` assembles the same sequence from the expert's steps, so what is trained is what is served.
Observations come from `shared.tasks.builtin._expert_observations` (what the expert's code prints, computed
without a sandbox; `tests/models/test_teacher_build.py` checks they equal the sandbox's).
"""

from __future__ import annotations

import logging
import math
import random
import time

import torch

from shared.agent.format import episode_messages, render_step, tool_turn
from shared.agent.tokens import chat_token_ids, tool_turn_ids
from shared.models.build_context import seeded_threads

logger = logging.getLogger("score.models")

# Bump when the examples change in a way the recipe does not capture (the built-in recipe records it).
DATA_VERSION = 1


def expert_trajectory(task):
    """The expert's steps for `task` with the observations its code prints (the last step's is not needed)."""
    from shared.tasks.builtin import _expert_observations
    from shared.tasks.expert import expert_steps

    steps = expert_steps(task)
    observations = iter(_expert_observations(task))
    filled = []
    for index, step in enumerate(steps):
        last = index == len(steps) - 1
        if step.kind == "act" and not last:
            step = step.model_copy(update={"observation": next(observations)})
        filled.append(step)
    return filled


def episode_example(tokenizer, task, steps) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) of a whole episode as a rollout would assemble it; mask 1 on the model's turns."""
    eos = tokenizer.eos_token_id
    ids = chat_token_ids(tokenizer, episode_messages(task, []), add_generation_prompt=True)
    mask = [0] * len(ids)
    for index, step in enumerate(steps):
        turn = list(tokenizer(render_step(step), add_special_tokens=False)["input_ids"]) + [eos]
        ids += turn
        mask += [1] * len(turn)
        if index == len(steps) - 1:
            break
        follow = tool_turn_ids(tokenizer, tool_turn(step) or "", model_emitted_eos=True)
        ids += follow
        mask += [0] * len(follow)
    return ids, mask


def agent_examples(tokenizer, tasks, *, rename_kb: float = 0.0, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """`episode_example` of the expert's trajectory of each task; a `rename_kb` share of the kb episodes (chosen
    with `seed`) have the world's names swapped for others (`shared.models.kb_renaming`), so they can only be
    written by copying names from the episode's own search results."""
    from shared.models.kb_renaming import renamed_episode

    rng = random.Random(seed)
    examples = []
    for task in tasks:
        steps = expert_trajectory(task)
        if task.family == "kb" and rename_kb and rng.random() < rename_kb:
            task, steps = renamed_episode(task, steps, rng)
        examples.append(episode_example(tokenizer, task, steps))
    return examples


def training_tasks(n_per_family: dict[str, int], seed: int):
    """Distinct train-split tasks of each family (the build never sees an eval-split question)."""
    from shared.tasks.builtin import builtin_tasks

    tasks = []
    for family, n in n_per_family.items():
        tasks += builtin_tasks(family=family, split="train", n=n, seed=seed)
    return tasks


def unused_train_tasks(family: str, n: int, *, exclude: set[str], seed: int) -> list:
    """The first `n` train-split tasks of `family` (draw `seed`) whose questions are not in `exclude`: validation
    tasks for a build that trained on `exclude`. The draw for a larger n extends the smaller one's, so growing
    the draw until `n` remain keeps earlier choices."""
    from shared.tasks.builtin import builtin_tasks

    draw = n
    while True:
        chosen = [task for task in builtin_tasks(family=family, split="train", n=draw, seed=seed)
                  if task.question not in exclude]
        if len(chosen) >= n:
            return chosen[:n]
        draw += 2 * (n - len(chosen))  # raises ValueError once the split is exhausted


def _batches(examples, *, batch_tokens: int, rng: random.Random):
    """Length-bucketed batches of about `batch_tokens` slots, in random order (one pass over the examples)."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    batches, current, width = [], [], 0
    for i in order:
        width_if = max(width, len(examples[i][0]))
        if current and width_if * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, width_if = [], len(examples[i][0])
        current.append(i)
        width = width_if
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _collate(examples, indices, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(examples[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    for row, i in enumerate(indices):
        tokens, mask = examples[i]
        ids[row, :len(tokens)] = torch.tensor(tokens)
        labels[row, :len(tokens)] = torch.tensor([t if m else -100 for t, m in zip(tokens, mask)])
    return ids, labels


def sft(model, examples, *, epochs: float, lr: float, seed: int, batch_tokens: int = 8192, warmup: int = 30,
        pad_id: int = 0, threads: int = 1, log_every_s: float = 10.0, time_budget_s: float | None = None) -> dict:
    """Train on (ids, mask) examples, right-padded (causal attention never sees the padding), cosine lr."""
    with seeded_threads(seed, threads):
        return _sft_loop(model, examples, epochs=epochs, lr=lr, seed=seed, batch_tokens=batch_tokens,
                         warmup=warmup, pad_id=pad_id, log_every_s=log_every_s, time_budget_s=time_budget_s)


def _sft_loop(model, examples, *, epochs, lr, seed, batch_tokens, warmup, pad_id, log_every_s, time_budget_s):
    rng = random.Random(seed)
    schedule = []
    full = int(math.floor(epochs))
    for _ in range(full):
        schedule += _batches(examples, batch_tokens=batch_tokens, rng=rng)
    if epochs > full:
        part = _batches(examples, batch_tokens=batch_tokens, rng=rng)
        schedule += part[:round((epochs - full) * len(part))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    started = last_log = time.perf_counter()
    tokens = trained = 0
    loss_value = float("nan")
    for step, indices in enumerate(schedule):
        progress = step / max(1, len(schedule))
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        ids, labels = _collate(examples, indices, pad_id)
        # The LM head only where there is a target: most positions are context (prompt, observations).
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != -100
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[keep]), targets[keep])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = loss.item()
        tokens += int(ids.numel())
        trained += int((labels != -100).sum())
        now = time.perf_counter()
        if now - last_log >= log_every_s or step == len(schedule) - 1:
            last_log = now
            logger.info("teacher SFT step %d/%d loss %.4f (%.0fs)", step + 1, len(schedule), loss_value,
                        now - started)
        if time_budget_s is not None and now - started > time_budget_s:
            logger.warning("teacher SFT stopped at step %d/%d: time budget %.0fs spent", step + 1, len(schedule),
                           time_budget_s)
            break
    model.eval()
    if not math.isfinite(loss_value):
        raise RuntimeError("teacher SFT diverged (non-finite loss)")
    return {"steps": step + 1, "planned_steps": len(schedule), "examples": len(examples), "tokens": tokens,
            "trained_tokens": trained, "final_loss": round(loss_value, 4),
            "seconds": round(time.perf_counter() - started, 2)}


def judge_replay_tasks(settings: dict, agent_task_seed: int) -> list:
    """The agent episodes the judge stage replays: the agent stage's draw (`agent_task_seed`) unless its
    `settings` name another (`replay_task_seed`, for more distinct tasks)."""
    return training_tasks(settings["replay"], settings.get("replay_task_seed", agent_task_seed))


def judge_sft(model, tokenizer, settings: dict, *, replay_task_seed: int) -> dict:
    """The build's second SFT: the `judge` strategy's prompts (`shared.models.judge_examples`) on broken trajectories
    of `settings["tasks"]`, mixed with agent episodes of the first SFT's tasks (`replay`), so that learning to
    judge costs the agent turns less (it still costs some: docs/teacher.md has the recipe's figures)."""
    from shared.models.judge_examples import training_examples

    started = time.perf_counter()
    examples = training_examples(tokenizer, training_tasks(settings["tasks"], settings["task_seed"]),
                                 settings["break_seed"], rename_kb=settings.get("rename_kb", 0.0))
    replay = judge_replay_tasks(settings, replay_task_seed)
    examples += agent_examples(tokenizer, replay, rename_kb=settings.get("rename_kb", 0.0), seed=settings["seed"])
    logger.info("teacher judge SFT data: %d examples (%d replayed episodes), %d tokens (%.1fs)", len(examples),
                len(replay), sum(len(ids) for ids, _ in examples), time.perf_counter() - started)
    return sft(model, examples, epochs=settings["epochs"], lr=settings["lr"], seed=settings["seed"],
               batch_tokens=settings["batch_tokens"], warmup=settings["warmup"],
               pad_id=tokenizer.pad_token_id, threads=settings["threads"])


def episodes_reproduced(model, examples, *, batch_tokens: int = 16384, pad_id: int = 0, threads: int = 1
                        ) -> list[bool]:
    """Per example: does greedy decoding reproduce every model turn exactly, given the expert's observations?

    Checked under teacher forcing (the argmax at every trained position is the expert's token), so it is a
    lower bound on greedy success when observations are deterministic: a model that reproduces the expert's
    turns token for token gets the expert's observations and answer. No code runs; a forward pass per batch."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    ok = [False] * len(examples)
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for indices in _batches(examples, batch_tokens=batch_tokens, rng=random.Random(0)):
                ids, labels = _collate(examples, indices, pad_id)
                predicted = model(input_ids=ids).logits[:, :-1].argmax(-1)
                targets = labels[:, 1:]
                wrong = ((predicted != targets) & (targets != -100)).any(dim=1)
                for row, i in enumerate(indices):
                    ok[i] = not bool(wrong[row])
        model.train(was_training)
    finally:
        torch.set_num_threads(previous_threads)
    return ok
