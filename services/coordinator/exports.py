"""A run's trajectories as datasets other trainers read: OpenAI messages, LLaMA-Factory ShareGPT, verl RL rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from shared.agent.format import episode_messages
from services.coordinator.records import sft_row
from shared.fsutil import atomic_write, write_text_atomic
from shared.schemas.trajectories import TrajectoryRecord

ExportFormat = Literal["messages", "sharegpt", "verl"]
FORMATS: tuple[str, ...] = ("messages", "sharegpt", "verl")
SHAREGPT_ROLES = {"user": "human", "assistant": "gpt"}

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
VERL_SCHEMA = pa.schema([
    ("prompt", pa.list_(_MESSAGE)),
    ("data_source", pa.string()),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([
        ("task_id", pa.string()), ("prefix_steps", pa.string()), ("chosen_step", pa.string()),
        ("rejected_step", pa.string()), ("first_error_step", pa.int64()),
    ])),
])


def export_messages(records: list[TrajectoryRecord]) -> list[dict]:
    """OpenAI chat rows (`messages`) with `task_id`, `outcome` and `stage`: the rows the trainer's dataset file holds
    (`records.sft_row`: correct trajectories with a turn to learn from), plus the stage that made each. Assistant
    turns carry OpenAI's `weight` (0: context only, as SCoRe-SFT trains them)."""
    return [{**row, "stage": record.stage} for record in records if (row := sft_row(record)) is not None]


def sharegpt_conversation(messages: list[dict]) -> tuple[str | None, list[dict]]:
    """(system prompt, human/gpt turns) of chat messages, in the alternation LLaMA-Factory requires."""
    system = None
    turns: list[dict] = []
    for message in messages:
        if message["role"] == "system":
            system = message["content"] if system is None else f"{system}\n{message['content']}"
            continue
        role = SHAREGPT_ROLES[message["role"]]
        if turns and turns[-1]["from"] == role:
            # A step whose observation was never produced leaves two assistant turns in a row; one turn keeps
            # the alternation LLaMA-Factory checks for.
            turns[-1]["value"] += "\n" + message["content"]
        else:
            turns.append({"from": role, "value": message["content"]})
    # LLaMA-Factory drops a conversation that does not end on a gpt turn; the final observation trains nothing.
    while turns and turns[-1]["from"] != "gpt":
        turns.pop()
    return system, turns


def export_sharegpt(records: list[TrajectoryRecord]) -> list[dict]:
    """LLaMA-Factory ShareGPT rows of the correct trajectories: `conversations` (human/gpt) and `system`.

    Observations are user turns in our chat format, so they become `human` turns; the trailing observation after
    the final answer is dropped because a conversation must end with `gpt`.
    """
    rows = []
    for row in export_messages(records):
        system, turns = sharegpt_conversation(row["messages"])
        if not turns:
            continue
        out = {"conversations": turns}
        if system is not None:
            out["system"] = system
        rows.append({**out, "task_id": row["task_id"], "outcome": row["outcome"], "stage": row["stage"]})
    return rows


def _ground_truth(record: TrajectoryRecord) -> str:
    answer = record.task.true_answer
    if isinstance(answer, list):
        return json.dumps([str(a) for a in answer])
    return "" if answer is None else str(answer)


def verl_rows(records: list[TrajectoryRecord]) -> list[dict]:
    """One verl RL row per record the teacher corrected: the verified prefix as the prompt, the step pair as extra."""
    rows = []
    for r in records:
        if r.chosen_step is None or r.first_error_step is None:
            continue
        prefix = r.steps[:r.first_error_step]
        rows.append({
            "prompt": episode_messages(r.task, prefix),
            "data_source": "score",
            "ability": str(getattr(r.task, "family", None) or "agent"),
            "reward_model": {"style": "rule", "ground_truth": _ground_truth(r)},
            "extra_info": {
                "task_id": r.task.id,
                "prefix_steps": json.dumps([s.model_dump(mode="json") for s in prefix]),
                "chosen_step": r.chosen_step.model_dump_json(),
                "rejected_step": r.rejected_step.model_dump_json() if r.rejected_step is not None else None,
                "first_error_step": r.first_error_step,
            },
        })
    return rows


def export_verl(records: list[TrajectoryRecord]) -> pa.Table:
    """verl-style RL rows (`prompt`, `data_source`, `ability`, `reward_model`, `extra_info`) as an Arrow table."""
    return pa.Table.from_pylist(verl_rows(records), schema=VERL_SCHEMA)


def write_export(records: list[TrajectoryRecord], fmt: ExportFormat, path: Path) -> Path:
    """Write one export atomically: JSONL for `messages` and `sharegpt`, parquet for `verl`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "verl":
        return atomic_write(Path(path), lambda handle: pq.write_table(export_verl(records), handle))
    rows = export_messages(records) if fmt == "messages" else export_sharegpt(records)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_text_atomic(Path(path), text)
