"""The built-in task suite: seeded arithmetic chains and multi-hop KB questions, with held-out splits.

A task's split is a pure function of its question text (a stable hash), so train and eval can never share a
question, whatever seeds or sizes are asked for. A seed only picks which tasks of a split come first.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from functools import cache
from typing import Iterator, Literal

from shared.schemas.agent import Task
from shared.tasks import arith, kb
from shared.tasks.expert import expert_steps
from shared.tools.search import BM25Search, format_hits

FAMILIES = ("arith", "kb")
Split = Literal["train", "eval"]
SPLITS: tuple[Split, ...] = ("train", "eval")
EVAL_PERCENT = 20

# How many tasks per family and split go into the tokenizer corpus ("a few thousand questions").
_TOKENIZER_TASKS = {"train": 1200, "eval": 300}


def split_of(question: str) -> Split:
    """The split a question belongs to, from a hash of its normalised text (stable across processes)."""
    normalised = " ".join(question.lower().split())
    bucket = int(hashlib.sha1(normalised.encode()).hexdigest()[:8], 16) % 100
    return "eval" if bucket < EVAL_PERCENT else "train"


def task_id(family: str, question: str) -> str:
    return f"{family}-{hashlib.sha1(question.encode()).hexdigest()[:10]}"


def _make_task(family: str, question: str, true_answer: int | str, meta: dict, split: Split) -> Task:
    return Task(id=task_id(family, question), question=question, true_answer=true_answer,
                family=family, split=split, meta=meta)


# A stream yields (question, true_answer, meta) candidates of every split, in a seeded order.
Candidate = tuple[str, int | str, dict]


def _arith_stream(rng: random.Random) -> Iterator[Candidate]:
    # The space of chains is astronomically larger than any n, so this never runs dry.
    while True:
        chain = arith.sample_chain(rng)
        yield arith.question_for(chain, rng), chain.result, chain.meta()


def _kb_stream(rng: random.Random) -> Iterator[Candidate]:
    # The world supports a finite set of questions: a seeded shuffle of all of them.
    questions = list(kb.all_questions())
    rng.shuffle(questions)
    for q in questions:
        yield q.question, q.answer, {"kind": q.kind, "hops": [dict(hop) for hop in q.hops]}


_STREAMS = {"arith": _arith_stream, "kb": _kb_stream}


def _family_tasks(family: str, split: Split, n: int, seed: int) -> list[Task]:
    if n == 0:
        return []
    rng = random.Random(f"{family}/{seed}")  # str seeds hash with SHA-512: identical in every process
    tasks: list[Task] = []
    seen: set[str] = set()
    for question, answer, meta in _STREAMS[family](rng):
        if question in seen or split_of(question) != split:
            continue
        seen.add(question)
        tasks.append(_make_task(family, question, answer, meta, split))
        if len(tasks) == n:
            return tasks
    raise ValueError(f"the {family!r} family has only {len(tasks)} {split} tasks; asked for {n}")


def builtin_tasks(*, family: str | None = None, split: Split = "train", n: int = 100, seed: int = 0) -> list[Task]:
    """`n` distinct tasks of one split; `family=None` interleaves both families (arith first).

    Deterministic for (family, split, n, seed); a larger n extends a smaller one's list.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; choose from {', '.join(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if family is not None:
        return _family_tasks(family, split, n, seed)
    per_family = [_family_tasks(f, split, (n + len(FAMILIES) - 1 - i) // len(FAMILIES), seed)
                  for i, f in enumerate(FAMILIES)]
    interleaved = itertools.chain.from_iterable(itertools.zip_longest(*per_family))
    return [task for task in interleaved if task is not None]


def knowledge_base() -> list[dict]:
    """The search corpus of the kb family: one {"id", "title", "text"} doc per entity of the fixed world."""
    return kb.documents()


@cache
def builtin_search_backend() -> BM25Search:
    """BM25 over `knowledge_base()`, built once per process (a few hundred milliseconds)."""
    return BM25Search.from_docs(knowledge_base())


def _expert_observations(task: Task) -> list[str]:
    """What the expert's code prints, without running a sandbox: numbers for arith, formatted hits for kb."""
    if task.family == "arith":
        return [str(v) for v in arith.ArithChain.from_meta(task.meta).values()]
    backend = builtin_search_backend()
    return [format_hits(backend.search(hop["entity"])) for hop in task.meta["hops"]]


def tokenizer_corpus() -> list[str]:
    """Texts to train the built-in tokenizer on: questions, expert steps, observations and every KB doc."""
    texts: list[str] = []
    for family, split in itertools.product(FAMILIES, SPLITS):
        for task in builtin_tasks(family=family, split=split, n=_TOKENIZER_TASKS[split]):
            texts.append(task.question)
            for step in expert_steps(task):
                texts.append(step.thought)
                texts.extend([step.code] if step.code else [])
            texts.extend(_expert_observations(task))
    texts.extend(f"{doc['title']}: {doc['text']}" for doc in knowledge_base())
    return texts
