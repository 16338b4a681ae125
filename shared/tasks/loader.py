"""User task files: JSONL in the paper's released format, one {"id", "question", "true_answer", ...} per line.

Every error names the 1-based line and the field, because these files are written by hand or by ad-hoc
scripts and a run should fail at submission, not hours later in the verify stage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from pydantic import ValidationError

from shared.schemas.agent import Task

_REQUIRED = ("id", "question", "true_answer")
_ANSWER_TYPES = "must be a string, a number or a list of strings"


class TaskFileError(ValueError):
    """A task file problem at one line (and, when it is about one, one field)."""

    def __init__(self, line: int, message: str, field: str | None = None) -> None:
        self.line, self.field, self.message = line, field, message
        where = f"line {line}: field {field!r}: " if field else f"line {line}: "
        super().__init__(where + message)


def _check_id(value: object, line: int) -> str:
    # Integer ids appear in some released data sets; they are kept, as strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise TaskFileError(line, "must be a non-empty string", "id")
    return value


def _check_question(value: object, line: int) -> str:
    if not isinstance(value, str):
        raise TaskFileError(line, "must be a string", "question")
    if not value.strip():
        raise TaskFileError(line, "must not be empty", "question")
    return value


def _check_true_answer(value: object, line: int) -> object:
    if isinstance(value, bool):  # JSON true/false would otherwise pass as the numbers 1/0
        raise TaskFileError(line, _ANSWER_TYPES, "true_answer")
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise TaskFileError(line, "must be a finite number", "true_answer")
        return value
    if isinstance(value, list):
        if not value:
            raise TaskFileError(line, "must not be an empty list", "true_answer")
        if not all(isinstance(alias, str) for alias in value):
            raise TaskFileError(line, _ANSWER_TYPES, "true_answer")
        return value
    raise TaskFileError(line, _ANSWER_TYPES, "true_answer")


def _parse_line(text: str, line: int) -> Task:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFileError(line, f"invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(raw, dict):
        raise TaskFileError(line, f"expected a JSON object, got {_json_kind(raw)}")
    for field in _REQUIRED:
        if field not in raw:
            raise TaskFileError(line, "is missing", field)
    fields = dict(raw)
    fields["id"] = _check_id(raw["id"], line)
    fields["question"] = _check_question(raw["question"], line)
    fields["true_answer"] = _check_true_answer(raw["true_answer"], line)
    try:
        return Task.model_validate(fields)
    except ValidationError as exc:  # e.g. a number past the bounds of a gold answer
        first = exc.errors()[0]
        raise TaskFileError(line, first["msg"], str(first["loc"][0]) if first["loc"] else None) from None


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), "null")


def parse_task_lines(lines: Iterable[str]) -> list[Task]:
    """Tasks from JSONL lines; blank lines are skipped; ids must be unique."""
    tasks: list[Task] = []
    first_line_of: dict[str, int] = {}
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        task = _parse_line(text, line)
        if task.id in first_line_of:
            raise TaskFileError(line, f"duplicate id {task.id!r} (also on line {first_line_of[task.id]})", "id")
        first_line_of[task.id] = line
        tasks.append(task)
    return tasks


def load_task_file(path: str | Path) -> list[Task]:
    """Tasks from a JSONL file (UTF-8, a byte-order mark is tolerated)."""
    with open(path, encoding="utf-8-sig") as f:
        return parse_task_lines(f)
