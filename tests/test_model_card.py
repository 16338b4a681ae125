"""Model cards (`shared/model_card.py`): Hugging Face front matter, lineage read from the parent's card or index,
an evaluation section added once and updated in place, and foreign text that stays text."""

from __future__ import annotations

import shutil

import pytest
import yaml
from markdown_it import MarkdownIt

from shared.checkpoints import CheckpointStore
from shared.model_card import (
    CARD, EVAL_END, EVAL_START, Evaluation, TrainingFacts, read_card, record_evaluation, training_card,
)

HOSTILE = [
    "---\nlibrary_name: evil\n---",
    "# Injected heading",
    "[click me](https://evil.example/x) ![img](https://evil.example/p.png)",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "<!-- /score:evaluation --> <!-- score:evaluation -->",
    "**bold** _em_ `code` ~~gone~~ $x^2$ | cell | \\",
    "line\r\nbreak\u2028sep\u0000nul\u202eRTL",
    "```\nfenced\n```",
]


def publish(store: CheckpointStore, name: str, facts: TrainingFacts | None, source):
    card = (lambda ref: training_card(ref, facts)) if facts is not None else None
    return store.publish(name, lambda d: shutil.copytree(source, d, dirs_exist_ok=True), parent=facts and facts.parent,
                         card=card)


def sft_facts(parent: str | None, parent_path=None, **extra) -> TrainingFacts:
    return TrainingFacts(method="sft", job="job-1", parent=parent, parent_path=parent_path and str(parent_path),
                         data={"dataset": "gold.jsonl", "conversations": 24}, hyperparameters={"learning_rate": 3e-3},
                         metrics={"loss": 1.25}, **extra)


def render(text: str):
    """Tokens of the card's body as a Hub-like renderer sees it (CommonMark with tables, HTML allowed)."""
    match = text.split("\n---\n", 1)
    assert text.startswith("---\n") and len(match) == 2
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).parse(match[1])


def inline_kinds(tokens) -> set[str]:
    return {child.type for token in tokens for child in (token.children or [])}


def code_spans(tokens) -> list[str]:
    return [child.content for token in tokens for child in (token.children or []) if child.type == "code_inline"]


def test_a_published_version_carries_its_card_and_lineage(tmp_path, student_model_dir):
    store = CheckpointStore(tmp_path / "checkpoints")
    first = publish(store, "cold", sft_facts("builtin:student"), student_model_dir)
    # The coordinator names the parent by its directory; the card names it by its series and version.
    second = publish(store, "score-sft", sft_facts(first.path, first.path), student_model_dir)
    front, body = read_card(second.path)
    assert front["library_name"] == "transformers" and front["tags"] == ["score", "sft"]
    assert front["base_model"] == "cold/v1" and front["base_model_relation"] == "finetune"
    assert front["score"]["checkpoint"] == "score-sft/v1"
    assert front["score"]["lineage"] == ["cold/v1", "builtin:student"]
    for section in ("# score-sft/v1", "## Lineage", "## Training data", "## Hyperparameters", "## Training results"):
        assert f"\n{section}\n" in body
    assert "| dataset | gold.jsonl |" in body and "| conversations | 24 |" in body
    assert "| learning\\_rate | 0.003 |" in body and "| loss | 1.25 |" in body
    assert "Base model (root): builtin:student" in body
    # The card appeared with the weights: the folder still loads as it did.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(second.path)
    AutoTokenizer.from_pretrained(second.path)


def test_lineage_follows_the_index_of_versions_published_before_cards(tmp_path, student_model_dir):
    store = CheckpointStore(tmp_path / "checkpoints")
    old = store.publish("old", lambda d: shutil.copytree(student_model_dir, d, dirs_exist_ok=True),
                        parent="builtin:student")
    older_child = store.publish("mid", lambda d: shutil.copytree(student_model_dir, d, dirs_exist_ok=True),
                                parent="old/v1")
    child = publish(store, "new", sft_facts("mid/v1", older_child.path), student_model_dir)
    assert not (tmp_path / "checkpoints" / "old" / "v1" / CARD).exists() and old.version == 1
    assert read_card(child.path)[0]["score"]["lineage"] == ["mid/v1", "old/v1", "builtin:student"]


def test_an_adapter_card_names_peft(tmp_path, student_model_dir):
    store = CheckpointStore(tmp_path / "checkpoints")
    ref = publish(store, "adapter", sft_facts("builtin:student", adapter=True), student_model_dir)
    front, _ = read_card(ref.path)
    assert front["library_name"] == "peft" and front["base_model_relation"] == "adapter" and "lora" in front["tags"]


def test_the_evaluation_section_is_added_once_and_updated_on_a_rerun(tmp_path, student_model_dir):
    store = CheckpointStore(tmp_path / "checkpoints")
    ref = publish(store, "evaluated", sft_facts("builtin:student"), student_model_dir)
    record_evaluation(ref.path, Evaluation(run="run-1", label="sft", solved=3, n=10, policy_version=2))
    record_evaluation(ref.path, Evaluation(run="run-1", label="sft", solved=4, n=10, policy_version=2))  # rerun
    text = (tmp_path / "checkpoints" / "evaluated" / "v1" / CARD).read_text()
    assert text.count(EVAL_START) == text.count(EVAL_END) == text.count("## Held-out evaluation") == 1
    assert "| run-1 | sft | held-out | 40.0% | [16.8%, 68.7%] | 4/10 |" in text and "3/10" not in text
    front, body = read_card(ref.path)
    [evaluation] = front["score"]["evaluations"]
    assert evaluation["success"] == 0.4 and evaluation["wilson_low"] == pytest.approx(0.16818, abs=1e-5)
    [result] = front["model-index"][0]["results"]
    assert result["metrics"][0] == {"type": "accuracy", "name": "held-out success (sft)", "value": 0.4}
    assert front["score"]["lineage"] == ["builtin:student"] and "## Training data" in body  # the rest kept
    # Another run's evaluation of the same checkpoint is a second row of the same section.
    record_evaluation(ref.path, Evaluation(run="run-2", label="baseline", solved=1, n=10))
    text = (tmp_path / "checkpoints" / "evaluated" / "v1" / CARD).read_text()
    assert text.count(EVAL_START) == 1 and "4/10" in text and "1/10" in text
    assert len(read_card(ref.path)[0]["model-index"][0]["results"]) == 2
    # A run that chose settings on validation tasks says so: never a held-out figure.
    record_evaluation(ref.path, Evaluation(run="run-3", label="rl", solved=2, n=10, tasks="validation"))
    text = (tmp_path / "checkpoints" / "evaluated" / "v1" / CARD).read_text()
    assert "| run-3 | rl | validation | 20.0% |" in text
    result = read_card(ref.path)[0]["model-index"][0]["results"][-1]
    assert result["metrics"][0]["name"] == "validation success (rl)" and result["dataset"]["type"] == "score-validation"


def test_a_card_written_elsewhere_keeps_its_text_and_gains_the_section_once(tmp_path):
    directory = tmp_path / "foreign"
    directory.mkdir()
    (directory / CARD).write_text("---\nlibrary_name: peft\nbase_model: x\n---\n\n# Model Card\n\nSome notes.\n")
    for solved in (1, 2):
        record_evaluation(directory, Evaluation(run="r", label="sft", solved=solved, n=4))
    front, body = read_card(directory)
    assert front["library_name"] == "peft" and front["score"]["evaluations"][0]["solved"] == 2
    assert body.count("Some notes.") == 1 and body.count(EVAL_START) == 1
    empty = tmp_path / "no-card"
    empty.mkdir()
    record_evaluation(empty, Evaluation(run="r", label="rl", solved=0, n=4))
    assert read_card(empty)[0]["score"]["checkpoint"] == "no-card"


def test_foreign_text_cannot_inject_markdown_html_or_front_matter(tmp_path, student_model_dir):
    store = CheckpointStore(tmp_path / "checkpoints")
    # A parent whose card was edited: its name and lineage are attacker text too.
    parent = publish(store, "parent", sft_facts("builtin:student"), student_model_dir)
    card = tmp_path / "checkpoints" / "parent" / "v1" / CARD
    front, body = read_card(parent.path)
    front["score"].update(checkpoint=HOSTILE[0], lineage=HOSTILE[1:4])
    card.write_text("---\n" + yaml.safe_dump(front) + "---\n" + body)
    facts = TrainingFacts(method="grpo", job=HOSTILE[4], parent=HOSTILE[5], parent_path=parent.path,
                          data={HOSTILE[6]: HOSTILE[7], "dataset": HOSTILE[2]},
                          hyperparameters={"report_to": HOSTILE[3:5]}, metrics={HOSTILE[1]: 1.0})
    ref = publish(store, "child", facts, student_model_dir)
    for i, text in enumerate(HOSTILE):
        record_evaluation(ref.path, Evaluation(run=text, label=HOSTILE[-1 - i], solved=i, n=10))
    record_evaluation(ref.path, Evaluation(run=HOSTILE[0], label=HOSTILE[-1], solved=9, n=10))  # a rerun

    text = (tmp_path / "checkpoints" / "child" / "v1" / CARD).read_text()
    front, body = read_card(ref.path)
    # Front matter: our keys only, every foreign value one line.
    assert list(front) == ["library_name", "base_model", "base_model_relation", "tags", "score", "model-index"]
    assert front["library_name"] == "transformers" and front["tags"] == ["score", "grpo"]
    assert front["score"]["lineage"][0] == "--- library_name: evil ---"
    assert len(front["score"]["evaluations"]) == len(HOSTILE)
    assert {e["solved"] for e in front["score"]["evaluations"] if e["run"] == "--- library_name: evil ---"} == {9}
    # Body: our headings only, no link, image, raw HTML or emphasis, the markers once each.
    tokens = render(text)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings == ["child/v1", "Lineage", "Training data", "Hyperparameters", "Training results",
                        "Held-out evaluation"]
    assert [t.content.strip() for t in tokens if t.type == "html_block"] == [EVAL_START, EVAL_END]  # ours only
    assert not {"link_open", "image", "html_inline", "strong_open", "em_open", "s_open"} & inline_kinds(tokens)
    assert code_spans(tokens) == ["AutoModelForCausalLM.from_pretrained"]  # the card's own, in its first line
    assert body.count(EVAL_START) == body.count(EVAL_END) == 1  # the front matter holds them as quoted data only
    assert "<script>" not in body and "\u2028" not in text and "\x00" not in text
    # The attacker's text is still there to read, as text.
    shown = " ".join(child.content for t in tokens for child in (t.children or []) if child.type == "text")
    assert "[click me](https://evil.example/x)" in shown and "<script>alert(1)</script>" in shown
