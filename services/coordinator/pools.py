"""A run's task pools: cold start, SCoRe-SFT (train), SCoRe-RL, held-out eval — disjoint by construction.

Pools are drawn once when the run is created and written to the run folder, so a restarted coordinator
and every worker see the same tasks, and a bad task file is refused before anything is created.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pydantic import BaseModel, Field, PrivateAttr

from shared.fsutil import write_text_atomic
from shared.paths import PathRefused, regular_file
from shared.schemas.agent import Task
from shared.schemas.run_config import TaskSource
from shared.tasks.builtin import builtin_tasks, split_of
from shared.tasks.loader import TaskFileError, load_task_file

POOLS_FILE = "tasks.json"


class Pools(BaseModel):
    bc_init: list[Task] = Field(description="Tasks the teacher solves for cold start.")
    train: list[Task] = Field(description="Tasks for mentored problem solving (SCoRe-SFT).")
    rl: list[Task] = Field(description="Tasks whose verified prefixes seed SCoRe-RL.")
    eval: list[Task] = Field(description="Held-out tasks.")
    reserve: list[Task] = Field(default_factory=list, description="Tasks the equal-teacher-token baseline draws from.")
    _by_id: dict[str, Task] | None = PrivateAttr(default=None)

    def by_id(self) -> dict[str, Task]:
        """Every task by id (built once: work items look tasks up on every delivery)."""
        if self._by_id is None:
            self._by_id = {task.id: task for pool in (self.bc_init, self.train, self.rl, self.eval, self.reserve)
                           for task in pool}
        return self._by_id


class PoolError(ValueError):
    """The task source cannot fill the pools; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _builtin(source: TaskSource) -> tuple[list[Task], list[Task]]:
    n_train = source.n_bc_init + source.n_train + source.n_rl + source.n_reserve
    if source.eval_split == "validation":
        n_train += source.n_eval
    eval_seed = source.seed if source.eval_seed is None else source.eval_seed
    train, evals = [], []
    share = len(source.families)
    for family in source.families:
        train += builtin_tasks(family=family, split="train", n=-(-n_train // share), seed=source.seed)
        evals += builtin_tasks(family=family, split="eval", n=-(-source.n_eval // share), seed=eval_seed)
    return train, evals


class FileRules(BaseModel):
    """Where task files may be and how large (from the settings: SCORE_HOME, SCORE_ALLOWED_PATHS, the size cap)."""

    roots: list[Path] = Field(description="Directories task files must be under.")
    max_bytes: int = Field(description="Largest task file.")


def _load(path: str, field: str, rules: FileRules | None) -> list[Task]:
    try:
        if rules is not None:
            path = str(regular_file(path, rules.roots, max_bytes=rules.max_bytes, what="task file"))
    except PathRefused as exc:
        raise PoolError(field, str(exc)) from exc
    try:
        return load_task_file(path)
    except TaskFileError as exc:
        raise PoolError(field, f"task file {path}: {exc}") from exc
    except OSError as exc:
        raise PoolError(field, f"cannot read task file {path}: {exc.strerror or exc}") from exc


def _from_files(source: TaskSource, rules: FileRules | None) -> tuple[list[Task], list[Task]]:
    tasks = _load(source.path, "tasks.path", rules)
    if source.eval_path is not None:
        return tasks, _load(source.eval_path, "tasks.eval_path", rules)
    return ([t for t in tasks if split_of(t.question) == "train"], [t for t in tasks if split_of(t.question) == "eval"])


def draw_pools(source: TaskSource, rules: FileRules | None = None) -> Pools:
    """The run's pools (deterministic for the source and its seed); raises PoolError or TaskFileError.
    With `rules`, task files outside its roots, not regular files or too large are a PoolError."""
    train, evals = _builtin(source) if source.path is None else _from_files(source, rules)
    missing = [t for t in train + evals if t.true_answer is None]
    if missing:
        raise PoolError("tasks.path", f"task {missing[0].id!r} has no true_answer; every task needs a gold answer")
    rng = random.Random(source.seed)
    rng.shuffle(train)
    # A separate eval seed keeps the held-out set fixed whatever the training seed.
    (rng if source.eval_seed is None else random.Random(source.eval_seed)).shuffle(evals)
    if source.eval_split == "validation":
        # Validation tasks come from the training split, after every training pool: disjoint from both.
        evals, train = train[len(train) - source.n_eval:], train[:len(train) - source.n_eval]
    need = source.n_bc_init + source.n_train + source.n_rl
    if len(train) < source.n_bc_init + source.n_train:
        raise PoolError("tasks.n_train", f"{len(train)} training tasks cannot fill n_bc_init + n_train = "
                        f"{source.n_bc_init + source.n_train}")
    if not evals:
        raise PoolError("tasks.n_eval", "no held-out tasks (give `eval_path`, or more tasks in `path`)")
    a, b = source.n_bc_init, source.n_bc_init + source.n_train
    return Pools(bc_init=train[:a], train=train[a:b], rl=train[b:min(need, len(train))], eval=evals[:source.n_eval],
                 reserve=train[need:need + source.n_reserve])


def save_pools(pools: Pools, run_dir: Path) -> None:
    write_text_atomic(run_dir / POOLS_FILE, pools.model_dump_json())


def load_pools(run_dir: Path) -> Pools:
    return Pools.model_validate(json.loads((run_dir / POOLS_FILE).read_text()))
