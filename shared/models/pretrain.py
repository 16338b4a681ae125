"""Base-model pre-training of the built-in tiny models on a generated, generic copying corpus.

A randomly initialised student fine-tuned on a few hundred expert trajectories learns the agent format but
not to copy the numbers of a question into its plan and code: the copy signal (a few digit tokens per turn,
always different numbers) is too thin against the format tokens. Real base models arrive with induction
heads from pre-training on text where things said earlier are repeated later. This module gives the tiny
models the same: an unlimited, seeded stream of plain documents (notes restated, items looked up, numbers
recorded and reused in small Python snippets, lists walked one item at a time) and a plain causal-LM loop.

The corpus is generic on purpose: no agent tags, no chat format and none of the built-in task question
templates, so what it teaches is copying and reading code, never the answers of a task.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator

import torch

from shared.models.build_context import seeded_threads

logger = logging.getLogger("score.models")

# Bump when the generated text changes; the built-in model recipe records it, so a new corpus rebuilds models.
CORPUS_VERSION = 1

_FIRST = ("Mara", "Otto", "Lena", "Ravi", "Iris", "Tomas", "Noor", "Hugo", "Aiko", "Bruno", "Cleo", "Dario",
          "Elsa", "Farid", "Greta", "Hana", "Ivan", "Jade", "Kofi", "Lior", "Mina", "Nils", "Olga", "Pavel",
          "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wes", "Yara", "Zane", "Ada", "Ben", "Cyra")
_PLACES = ("Lisbon", "Oslo", "Quito", "Hanoi", "Accra", "Perth", "Tunis", "Riga", "Lima", "Dakar", "Kyoto",
           "Porto", "Cairo", "Turin", "Bergen", "Malmo", "Cork", "Graz", "Split", "Leeds", "Nantes", "Basel")
_THINGS = ("screws", "nails", "bolts", "apples", "pears", "boxes", "tickets", "chairs", "lamps", "cables",
           "coins", "stamps", "books", "cups", "plates", "seeds", "bricks", "tiles", "pens", "maps")
_UNITS = ("meters", "grams", "seconds", "liters", "points", "votes", "steps", "pages", "km", "units")
_FIELDS = ("room", "desk", "locker", "badge", "seat", "phone extension", "order", "table", "gate", "bin")
_ATTRS = ("city", "color", "pet", "team", "instrument", "language", "sport", "fruit")
_VALUES = {
    "city": _PLACES,
    "color": ("red", "blue", "green", "amber", "violet", "teal", "black", "white", "gold", "grey"),
    "pet": ("cat", "dog", "parrot", "rabbit", "turtle", "hamster", "goldfish", "lizard"),
    "team": ("Falcons", "Otters", "Comets", "Rangers", "Tigers", "Pilots", "Owls", "Sharks"),
    "instrument": ("violin", "drums", "flute", "cello", "guitar", "piano", "trumpet", "harp"),
    "language": ("Greek", "Hindi", "Polish", "Swahili", "Korean", "Dutch", "Turkish", "Welsh"),
    "sport": ("tennis", "rowing", "chess", "fencing", "judo", "cycling", "hockey", "golf"),
    "fruit": ("mango", "plum", "kiwi", "cherry", "lime", "melon", "papaya", "fig"),
}
_VARS = ("x", "y", "z", "n", "m", "k", "v", "w", "total", "count", "value", "score", "size", "acc", "res",
         "tmp", "cur", "amount", "base", "step", "a", "b", "c", "d", "e", "p", "q", "r", "s", "t")
_VERBS = (("plus", "+"), ("minus", "-"), ("times", "*"))


def _number(rng: random.Random) -> int:
    """Mostly 1-4 digit numbers, sometimes up to 8: long numbers must be copied digit by digit too."""
    digits = rng.choice((1, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7, 8))
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _names(rng: random.Random, k: int) -> list[str]:
    return rng.sample(_FIRST, k)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _inventory(rng: random.Random) -> str:
    things = rng.sample(_THINGS, rng.randint(2, 5))
    counts = [_number(rng) for _ in things]
    listed = [f"{c} {t}" for c, t in zip(counts, things)]
    lines = [f"Inventory note {rng.randint(1, 99)}. The shelf holds {_join(listed)}."]
    style = rng.randrange(3)
    if style == 0:
        lines.append("Restated: " + ", ".join(listed) + ".")
    elif style == 1:
        lines += [f"- {t}: {c}" for c, t in zip(counts, things)]
    else:
        for t, c in rng.sample(list(zip(things, counts)), len(things)):
            lines.append(f"How many {t}? There are {c} {t}.")
    return "\n".join(lines)


def _directory(rng: random.Random) -> str:
    field = rng.choice(_FIELDS)
    people = _names(rng, rng.randint(2, 6))
    numbers = [_number(rng) for _ in people]
    lines = [f"{p} has {field} {n}." for p, n in zip(people, numbers)]
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(people))
        if rng.random() < 0.5:
            lines.append(f"Which {field} does {people[i]} have? {people[i]} has {field} {numbers[i]}.")
        else:
            lines.append(f"Who has {field} {numbers[i]}? That is {people[i]}.")
    return "\n".join(lines)


def _facts(rng: random.Random) -> str:
    attr = rng.choice(_ATTRS)
    people = _names(rng, rng.randint(2, 5))
    values = [rng.choice(_VALUES[attr]) for _ in people]
    lines = [f"The {attr} of {p} is {v}." for p, v in zip(people, values)]
    i = rng.randrange(len(people))
    lines.append(rng.choice((f"Looking up {people[i]}: the {attr} is {values[i]}.",
                             f"Q: what is the {attr} of {people[i]}? A: {values[i]}.")))
    return "\n".join(lines)


def _record_code(rng: random.Random) -> str:
    """Numbers stated in prose, then assigned, combined and printed in code, then the output restated."""
    names = rng.sample(_VARS, rng.randint(2, 3))
    values = [_number(rng) for _ in names]
    unit = rng.choice(_UNITS)
    said = _join([f"{v} {unit}" for v in values])
    lines = [rng.choice((f"The log recorded {said}.", f"Measured values: {said}.", f"We wrote down {said}."))]
    code = [f"{n} = {v}" for n, v in zip(names, values)]
    expr_parts, result = [names[0]], values[0]
    for n, v in zip(names[1:], values[1:]):
        word, sym = rng.choice(_VERBS)
        if sym == "*" and abs(result * v) > 10**9:
            word, sym = "plus", "+"
        expr_parts.append(f"{sym} {n}")
        result = {"+": result + v, "-": result - v, "*": result * v}[sym]
    out = rng.choice(("out", "result", "answer", "total"))
    code += [f"{out} = {' '.join(expr_parts)}", f"print({out})"]
    lines += ["```python", *code, "```", f"Output: {result}", rng.choice((
        f"So {out} is {result}.", f"The printed value was {result}.", f"{result} is what it printed."))]
    return "\n".join(lines)


def _walk(rng: random.Random) -> str:
    """A list announced, then handled one item at a time in code, each result fed to the next line."""
    start = _number(rng) % 1000
    changes = []
    for _ in range(rng.randint(2, 5)):
        word, sym = rng.choice(_VERBS)
        changes.append((word, sym, rng.randint(2, 99) if sym == "*" else rng.randint(1, 999)))
    plan = ", ".join(f"{w} {n}" for w, _, n in changes)
    lines = [rng.choice((f"Changes to {start}: {plan}.", f"From {start} we go {plan}.",
                         f"Value {start}, adjusted by {plan}."))]
    names = rng.sample(_VARS, len(changes))
    prev, value = str(start), start
    for name, (word, sym, n) in zip(names, changes):
        value = {"+": value + n, "-": value - n, "*": value * n}[sym]
        lines += [f"# {word} {n}", f"{name} = {prev} {sym} {n}", f"print({name})", f"# -> {value}"]
        prev = name
    lines.append(rng.choice((f"Done: {prev} holds {value}.", f"print({prev}) gives {value}.",
                             f"The last value is {value}.")))
    return "\n".join(lines)


def _schedule(rng: random.Random) -> str:
    people = _names(rng, rng.randint(2, 4))
    places = rng.sample(_PLACES, len(people))
    days = [rng.randint(1, 28) for _ in people]
    lines = [f"{p} travels to {c} on day {d}." for p, c, d in zip(people, places, days)]
    lines.append("Summary:")
    lines += [f"{i + 1}. {p} - {c} - day {d}" for i, (p, c, d) in enumerate(zip(people, places, days))]
    return "\n".join(lines)


def _table(rng: random.Random) -> str:
    keys = rng.sample(_VARS, rng.randint(2, 5))
    vals = [_number(rng) for _ in keys]
    mapping = ", ".join(f"'{k}': {v}" for k, v in zip(keys, vals))
    lines = [f"data = {{{mapping}}}"]
    for k in rng.sample(keys, rng.randint(1, len(keys))):
        lines += [f"print(data['{k}'])", str(vals[keys.index(k)])]
    return "\n".join(lines)


def _readback(rng: random.Random) -> str:
    """A list of codes read back: the densest copying there is, one digit at a time."""
    label = rng.choice(("Codes", "Readings", "Ticket numbers", "Serials", "Scores", "IDs", "Totals"))
    items = [str(_number(rng)) for _ in range(rng.randint(2, 7))]
    sep = rng.choice((", ", " ", "; "))
    lines = [f"{label}: {sep.join(items)}."]
    style = rng.randrange(3)
    if style == 0:
        lines.append(rng.choice(("Read back:", "Again:", "Confirmed:")) + " " + sep.join(items) + ".")
    elif style == 1:
        lines += [f"{i + 1}) {item}" for i, item in enumerate(items)]
    else:
        pairs = list(enumerate(items))
        rng.shuffle(pairs)
        lines += [f"Item {i + 1} is {item}." for i, item in pairs[: rng.randint(1, len(pairs))]]
    return "\n".join(lines)


def _restate(rng: random.Random) -> str:
    """A short plan, then the same plan restated in other words, item by item, in order."""
    start = _number(rng) % 1000
    changes = [(rng.choice(("plus", "minus", "times")), rng.randint(2, 999)) for _ in range(rng.randint(2, 5))]
    head = rng.choice(("Plan for {s}: {c}.", "Given {s}, do {c}.", "Input {s}; steps {c}."))
    lines = [head.format(s=start, c=", ".join(f"{w} {n}" for w, n in changes))]
    if rng.random() < 0.5:
        lines.append(f"So: from {start}, then " + ", then ".join(f"{w} {n}" for w, n in changes) + ".")
    else:
        lines.append(f"There are {len(changes)} steps for {start}:")
        lines += [f"step {i + 1}: {w} {n}" for i, (w, n) in enumerate(changes)]
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "restate": _restate,
    "inventory": _inventory, "directory": _directory, "facts": _facts, "record_code": _record_code,
    "walk": _walk, "schedule": _schedule, "table": _table, "readback": _readback,
}
# Relative frequencies: copying-dense documents dominate, the rest keeps prose and code varied.
WEIGHTS = {"inventory": 2, "directory": 2, "facts": 1, "record_code": 2, "walk": 2, "schedule": 1, "table": 1,
           "readback": 3, "restate": 3}


def corpus_documents(seed: int) -> Iterator[str]:
    """An endless, deterministic stream of documents for `seed`."""
    rng = random.Random(seed)
    kinds = sorted(GENERATORS)
    weights = [WEIGHTS[k] for k in kinds]
    while True:
        yield GENERATORS[rng.choices(kinds, weights)[0]](rng)


def corpus_recipe() -> dict:
    """What the corpus is, for recipe hashes."""
    return {"version": CORPUS_VERSION, "weights": dict(sorted(WEIGHTS.items()))}


def _token_stream(tokenizer, seed: int) -> Iterator[int]:
    eos = tokenizer.eos_token_id
    for document in corpus_documents(seed):
        yield from tokenizer(document, add_special_tokens=False)["input_ids"]
        yield eos


def batches(tokenizer, *, seed: int, batch_size: int, seq_len: int) -> Iterator[torch.Tensor]:
    """Rows of `seq_len` tokens cut from the packed document stream (documents split by end-of-text)."""
    stream = _token_stream(tokenizer, seed)
    while True:
        flat = [next(stream) for _ in range(batch_size * seq_len)]
        yield torch.tensor(flat, dtype=torch.long).view(batch_size, seq_len)


def pretrain(model, tokenizer, *, steps: int, lr: float, seed: int, batch_size: int = 16, seq_len: int = 256,
             warmup: int = 20, weight_decay: float = 0.01, threads: int = 1, log_every_s: float = 5.0) -> dict:
    """Causal-LM training on the generated corpus (every token in the loss), AdamW with cosine decay."""
    with seeded_threads(seed, threads):
        return _loop(model, tokenizer, steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                     seq_len=seq_len, warmup=warmup, weight_decay=weight_decay, log_every_s=log_every_s)


def _loop(model, tokenizer, *, steps, lr, seed, batch_size, seq_len, warmup, weight_decay, log_every_s) -> dict:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    started = last_log = time.perf_counter()
    tokens, loss_value = 0, float("nan")
    data = batches(tokenizer, seed=seed, batch_size=batch_size, seq_len=seq_len)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        ids = next(data)
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        tokens += ids.numel()
        loss_value = loss.item()
        now = time.perf_counter()
        if now - last_log >= log_every_s or step == steps - 1:
            last_log = now
            logger.info("pretraining step %d/%d loss %.3f, %.0f tokens/s", step + 1, steps, loss_value,
                        tokens / (now - started))
    model.eval()
    seconds = time.perf_counter() - started
    return {"steps": steps, "tokens": tokens, "final_loss": round(loss_value, 4), "seconds": round(seconds, 2)}


PROBE_KINDS = ("record_code", "walk", "inventory", "directory")


def copy_probe(model, tokenizer, *, seed: int, n: int = 64, kinds: tuple[str, ...] = PROBE_KINDS) -> float:
    """Teacher-forced accuracy on digits that repeat a number seen earlier in the document (held-out seed)."""
    correct = total = 0
    rng = random.Random(seed)
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            text = GENERATORS[rng.choice(kinds)](rng)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            pieces = [tokenizer.decode([i]) for i in ids]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            predicted = logits.argmax(-1).tolist()
            seen = ""
            for pos in range(1, len(ids)):
                seen += pieces[pos - 1]
                piece = pieces[pos]
                if not piece.strip().isdigit():
                    continue
                # the whole number this digit belongs to, scored only when it appeared before
                end = pos
                while end + 1 < len(ids) and pieces[end + 1].isdigit():
                    end += 1
                start = pos
                while start > 0 and pieces[start - 1].isdigit():
                    start -= 1
                number = "".join(pieces[start:end + 1]).strip()
                if len(number) >= 2 and number in seen[: len(seen) - (pos - start)]:
                    total += 1
                    correct += int(predicted[pos - 1] == ids[pos])
    return correct / max(1, total)
