"""Dataset exports: OpenAI messages, LLaMA-Factory ShareGPT and verl parquet rows from hand-built records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from services.coordinator.exports import (
    VERL_SCHEMA, export_messages, export_sharegpt, export_verl, sharegpt_conversation, write_export,
)
from services.coordinator.records import trained_on
from shared.agent.format import episode_messages
from shared.agent.prompts import OBSERVATION_PREFIX, SYSTEM_PROMPT
from shared.schemas.agent import Step


def test_messages_keep_correct_trajectories_with_their_keys(records):
    rows = export_messages(records)
    correct = [r for r in records if r.correct]
    assert len(rows) == len(correct) == 6
    for row, record in zip(rows, correct):
        # The messages are the episode's, each assistant turn with OpenAI's `weight` as SCoRe-SFT trains it.
        assert [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]] == episode_messages(
            record.task, record.steps)
        assert [m["weight"] for m in row["messages"] if m["role"] == "assistant"] == [
            int(trained_on(record, step)) for step in record.steps]
        assert (row["task_id"], row["outcome"], row["stage"]) == (record.task.id, record.outcome, record.stage)


def test_sharegpt_roles_alternate_and_end_with_gpt(records):
    rows = export_sharegpt(records)
    assert len(rows) == 6
    for row in rows:
        assert row["system"] == SYSTEM_PROMPT
        roles = [turn["from"] for turn in row["conversations"]]
        assert roles[0] == "human" and roles[-1] == "gpt"
        assert all(a != b for a, b in zip(roles, roles[1:])), roles
        assert set(roles) == {"human", "gpt"}
    # Observations are user turns, so they appear as human turns after the first question.
    first = rows[0]["conversations"]
    assert first[0]["value"] == records[0].task.question
    observations = [turn for turn in first if turn["value"].startswith(OBSERVATION_PREFIX)]
    assert observations and all(turn["from"] == "human" for turn in observations)


def test_sharegpt_merges_turns_that_would_not_alternate():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"},
                {"role": "user", "content": "obs"}]
    system, turns = sharegpt_conversation(messages)
    assert system == "s"
    assert turns == [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a1\na2"}]


def test_verl_rows_one_per_corrected_record(records):
    table = export_verl(records)
    corrected = [r for r in records if r.chosen_step is not None]
    assert table.num_rows == len(corrected) == 5
    assert table.schema.equals(VERL_SCHEMA)
    rows = table.to_pylist()
    for row, record in zip(rows, corrected):
        prefix = record.steps[:record.first_error_step]
        assert row["prompt"] == episode_messages(record.task, prefix)
        assert row["data_source"] == "score"
        assert row["ability"] == record.task.family
        assert row["reward_model"] == {"style": "rule", "ground_truth": str(record.task.true_answer)}
        extra = row["extra_info"]
        assert extra["task_id"] == record.task.id and extra["first_error_step"] == record.first_error_step
        assert [Step.model_validate(s) for s in json.loads(extra["prefix_steps"])] == prefix
        assert Step.model_validate_json(extra["chosen_step"]) == record.chosen_step
        assert Step.model_validate_json(extra["rejected_step"]) == record.rejected_step


def test_verl_ground_truth_aliases_and_plain_tasks(records):
    record = next(r for r in records if r.chosen_step is not None)
    task = record.task.model_copy(update={"true_answer": ["4", "four"]})
    plain = type(record.task)(id="plain", question="q?", true_answer="x")
    rows = export_verl([record.model_copy(update={"task": task}),
                        record.model_copy(update={"task": plain})]).to_pylist()
    assert json.loads(rows[0]["reward_model"]["ground_truth"]) == ["4", "four"]
    assert rows[1]["ability"] == "agent"


def test_write_export_round_trips(tmp_path, records):
    path = write_export(records, "verl", tmp_path / "out" / "rl.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["prompt", "data_source", "ability", "reward_model", "extra_info"]
    assert table.to_pylist() == export_verl(records).to_pylist()

    for fmt, build in (("messages", export_messages), ("sharegpt", export_sharegpt)):
        path = write_export(records, fmt, tmp_path / f"{fmt}.jsonl")
        lines = path.read_text().splitlines()
        assert [json.loads(line) for line in lines] == build(records)
    assert not list(tmp_path.rglob("*.tmp"))


def test_empty_exports_and_unknown_format(tmp_path):
    assert export_verl([]).num_rows == 0
    assert pq.read_table(write_export([], "verl", tmp_path / "empty.parquet")).num_rows == 0
    assert write_export([], "messages", tmp_path / "empty.jsonl").read_text() == ""
    with pytest.raises(ValueError, match="unknown export format"):
        write_export([], "csv", tmp_path / "x.csv")
