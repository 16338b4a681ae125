"""User task files: valid lines become Tasks with extra fields kept; every error names its line and field."""

from __future__ import annotations

import json

import pytest

from shared.tasks.builtin import builtin_tasks
from shared.tasks.loader import TaskFileError, load_task_file, parse_task_lines


def _line(**fields) -> str:
    return json.dumps(fields)


def test_valid_lines_keep_extra_fields_and_skip_blank_lines():
    lines = [
        _line(id="a", question="Who?", true_answer="Mira", source="hotpotqa"),
        "",
        "   \n",
        _line(id="b", question="How many?", true_answer=464),
        _line(id="c", question="Which?", true_answer=["NYC", "New York City"]),
        _line(id="d", question="Half?", true_answer=0.5),
    ]
    tasks = parse_task_lines(lines)
    assert [t.id for t in tasks] == ["a", "b", "c", "d"]
    assert tasks[0].source == "hotpotqa"
    assert [t.true_answer for t in tasks] == ["Mira", 464, ["NYC", "New York City"], 0.5]


def test_integer_ids_are_kept_as_strings():
    assert parse_task_lines([_line(id=7, question="q", true_answer="x")])[0].id == "7"


def _error(lines: list[str]) -> TaskFileError:
    with pytest.raises(TaskFileError) as info:
        parse_task_lines(lines)
    return info.value


def test_error_string_names_line_and_field():
    good = _line(id="a", question="q", true_answer="x")
    error = _error([good, "", _line(id="b", question="q", true_answer={"x": 1})])
    assert str(error) == "line 3: field 'true_answer': must be a string, a number or a list of strings"
    assert (error.line, error.field) == (3, "true_answer")
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"id": "a", "question": ', None, "invalid JSON"),
        ('["a", "q", "x"]', None, "expected a JSON object, got an array"),
        ('"just text"', None, "expected a JSON object, got a string"),
        (_line(question="q", true_answer="x"), "id", "is missing"),
        (_line(id="a", true_answer="x"), "question", "is missing"),
        (_line(id="a", question="q"), "true_answer", "is missing"),
        (_line(id="", question="q", true_answer="x"), "id", "must be a non-empty string"),
        (_line(id=["a"], question="q", true_answer="x"), "id", "must be a non-empty string"),
        (_line(id="a", question="  ", true_answer="x"), "question", "must not be empty"),
        (_line(id="a", question=3, true_answer="x"), "question", "must be a string"),
        (_line(id="a", question="q", true_answer=True), "true_answer", "must be a string, a number or a list of strings"),
        (_line(id="a", question="q", true_answer=None), "true_answer", "must be a string, a number or a list of strings"),
        (_line(id="a", question="q", true_answer=["x", 2]), "true_answer", "must be a string, a number or a list of strings"),
        (_line(id="a", question="q", true_answer=[]), "true_answer", "must not be an empty list"),
        ('{"id": "a", "question": "q", "true_answer": NaN}', "true_answer", "must be a finite number"),
    ],
)
def test_each_error_names_its_line_and_field(line, field, message):
    error = _error(["", _line(id="ok", question="q", true_answer="x"), line])
    assert error.line == 3
    assert error.field == field
    assert message in error.message
    assert str(error).startswith("line 3: " + (f"field '{field}': " if field else ""))


def test_duplicate_id_names_both_lines():
    lines = [_line(id="a", question="q1", true_answer="x"), _line(id="b", question="q2", true_answer="y"),
             _line(id="a", question="q3", true_answer="z")]
    error = _error(lines)
    assert str(error) == "line 3: field 'id': duplicate id 'a' (also on line 1)"


def test_load_task_file_reads_utf8_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("\ufeff" + _line(id="é", question="Où est Zürich?", true_answer="Suisse") + "\n\n", encoding="utf-8")
    [task] = load_task_file(path)
    assert (task.id, task.question, task.true_answer) == ("é", "Où est Zürich?", "Suisse")


def test_builtin_tasks_written_as_jsonl_load_back_unchanged(tmp_path):
    tasks = builtin_tasks(n=10, seed=3)
    path = tmp_path / "builtin.jsonl"
    path.write_text("\n".join(t.model_dump_json() for t in tasks) + "\n", encoding="utf-8")
    assert [t.model_dump() for t in load_task_file(str(path))] == [t.model_dump() for t in tasks]
