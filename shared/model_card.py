"""Model cards: the `README.md` of every checkpoint the trainer publishes, in the Hugging Face layout.

    ---                                 YAML front matter (what the Hub and `huggingface_hub.ModelCard` read)
    library_name: transformers          `peft` for a LoRA adapter directory
    base_model: run7-bc_init/v1         the checkpoint it was trained from (Hugging Face's meaning: the parent)
    tags: [score, sft]
    score: {checkpoint, lineage, evaluations}   our own facts, read back by the next card and the next update
    model-index: [...]                  the held-out results in the Hub's evaluation format (once evaluated)
    ---
    # name/vN, then Lineage, Training data, Hyperparameters, Training results, Held-out evaluation

The trainer writes the card inside the version directory before it becomes visible (`CheckpointStore.publish`);
the coordinator adds the held-out evaluation later with `record_evaluation`, which rewrites only the front
matter and the section between the evaluation markers, so a rerun updates it instead of adding another.
Transformers and vLLM never read README.md: the folder loads as it is.

Every value that did not come from this module (names, paths, labels, run names, and whatever a parent card
says, which anyone who can write the folder can edit) goes through `plain` in the front matter (one line,
no control characters, YAML-quoted by the dumper) and `md_text` in the body (markdown punctuation
backslash-escaped, `&<>` as entities), so it can neither close the front matter, start a heading, a link,
an image, emphasis or raw HTML, nor forge the evaluation markers.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from shared.checkpoints import INDEX, CheckpointRef, CheckpointStore
from shared.fsutil import file_lock, write_text_atomic
from shared.stats import wilson

CARD = "README.md"
MAX_LINEAGE = 32     # parents listed; a longer chain (or a cycle in edited cards) is cut here
MAX_TEXT = 240       # characters of one foreign value
EVAL_START, EVAL_END = "<!-- score:evaluation -->", "<!-- /score:evaluation -->"
_FRONT = re.compile(r"\A---\n(.*?)^---[ \t]*\n?", re.DOTALL | re.MULTILINE)
_EVAL_SECTION = re.compile(re.escape(EVAL_START) + ".*?" + re.escape(EVAL_END) + r"\n?", re.DOTALL)
_VERSION_DIR = re.compile(r"^v(\d+)$")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# ASCII punctuation that can be inline markup (emphasis, code, links, images, tables, strikethrough, math, ...);
# a value never starts a line, so the block markers among the rest (`-`, `+`, `=`, `1.`) stay readable as they are.
_PUNCTUATION = frozenset(string.punctuation) - set(_ENTITIES) - set("-/.,:;'\"=%?+")
METHODS = {"sft": "Supervised fine-tuning (SFT)", "grpo": "GRPO (reinforcement learning on rollout groups)"}


class TrainingFacts(BaseModel):
    """What the trainer knows about a checkpoint it is publishing."""

    method: Literal["sft", "grpo"]
    job: str = Field(description="The SFT job id or `rl:<session id>` that wrote it.")
    parent: str | None = Field(description="Lineage label of what it was trained from (`name/vN`, `builtin:<role>`, "
                               "a directory).")
    parent_path: str | None = Field(default=None, description="That parent's directory, whose card is read.")
    adapter: bool = Field(default=False, description="The folder is a PEFT LoRA adapter (loaded on its base).")
    data: dict[str, Any] = Field(default_factory=dict, description="Training data facts, in display order.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict, description="Training metrics at publication.")


class Evaluation(BaseModel):
    """One evaluation of a checkpoint: a run's measurement of one of its policies, on held-out tasks or (when a
    run chooses settings) on validation tasks."""

    run: str = Field(description="Run id.")
    label: str = Field(description="The policy's name in the run (`bc_init`, `sft`, `rl`, `baseline`, ...).")
    solved: int = Field(ge=0)
    n: int = Field(ge=0)
    policy_version: int | None = None
    tasks: Literal["held-out", "validation"] = Field(default="held-out", description="Which tasks were evaluated.")

    @property
    def key(self) -> tuple[str, str]:
        return (plain(self.run), plain(self.label))  # as the card stores them

    def facts(self) -> dict:
        low, high = wilson(self.solved, self.n)
        success = self.solved / self.n if self.n else 0.0
        return {"run": plain(self.run), "label": plain(self.label), "solved": self.solved, "n": self.n,
                "success": round(success, 6), "wilson_low": round(low, 6), "wilson_high": round(high, 6),
                "policy_version": self.policy_version, "tasks": self.tasks}


# --- escaping ------------------------------------------------------------------------------------


def plain(value: Any, limit: int = MAX_TEXT) -> str:
    """`value` as one line of printable text: control, format and separator characters become spaces."""
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch for ch in str(value))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_text(value: Any, limit: int = MAX_TEXT) -> str:
    """`value` as inert markdown text on one line: inline markup characters backslash-escaped, `&<>` as entities."""
    return "".join(_ENTITIES.get(ch) or (f"\\{ch}" if ch in _PUNCTUATION else ch) for ch in plain(value, limit))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, (list, tuple)):
        return ", ".join(md_text(v) for v in value) or "-"
    return md_text(value)


def _table(header: tuple[str, str], rows: dict[str, Any]) -> list[str]:
    if not rows:
        return ["None recorded.", ""]
    return [f"| {header[0]} | {header[1]} |", "|---|---|",
            *(f"| {md_text(key)} | {_cell(value)} |" for key, value in rows.items()), ""]


# --- reading cards and lineage -------------------------------------------------------------------


def read_card(directory: Path) -> tuple[dict, str]:
    """(front matter, body) of `directory`'s README.md; ({}, text) when it has no readable front matter."""
    try:
        text = (Path(directory) / CARD).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}, ""
    match = _FRONT.match(text)
    if match is None:
        return {}, text
    try:
        front = yaml.safe_load(match[1])
    except yaml.YAMLError:
        return {}, text
    return (front, text[match.end():]) if isinstance(front, dict) else ({}, text)


def _own_facts(directory: Path | None) -> dict:
    """The `score` block of a card this module wrote, else {}."""
    if directory is None:
        return {}
    facts = read_card(directory)[0].get("score")
    return facts if isinstance(facts, dict) else {}


def _index_entry(directory: Path) -> CheckpointRef | None:
    """The index row of `directory` when it is `<store>/<name>/v<N>` (versions published before cards)."""
    match = _VERSION_DIR.match(directory.name)
    if match is None or not (directory.parent / INDEX).is_file():
        return None
    try:
        return CheckpointStore(directory.parent.parent).get(directory.parent.name, int(match[1]))
    except (KeyError, ValueError, OSError):
        return None


def _locate(label: str | None, store_root: Path) -> Path | None:
    """The directory of a lineage label: a published `name/vN` in the same store, or an absolute directory."""
    if not label or label.startswith("builtin:"):
        return None
    try:
        ref = CheckpointStore(store_root).resolve(label)
    except (KeyError, ValueError, OSError):
        ref = None
    if ref is not None:
        return Path(ref.path)
    path = Path(label)
    return path if path.is_absolute() and path.is_dir() else None


def lineage(parent: str | None, parent_path: str | Path | None) -> list[str]:
    """What a checkpoint descends from, newest first: its parent, the parent's parent, ... down to the root.

    A parent with a card gives its own name and lineage; one published before cards is followed through its
    series' index.json; anything else (a built-in model, a foreign directory) ends the chain as its label."""
    chain: list[str] = []
    label, path = parent, Path(parent_path) if parent_path else None
    while label and len(chain) < MAX_LINEAGE:
        own = _own_facts(path)
        if own.get("checkpoint"):
            parents = own.get("lineage") if isinstance(own.get("lineage"), list) else []
            chain += [plain(own["checkpoint"]), *(plain(p) for p in parents)]
            break
        entry = _index_entry(path) if path is not None else None
        if entry is None:
            chain.append(plain(label))
            break
        chain.append(f"{entry.name}/v{entry.version}")
        label, path = entry.parent, _locate(entry.parent, path.parent.parent)
    return chain[:MAX_LINEAGE]


# --- writing -------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """Front matter data with every string made `plain` (keys too): a value read from an edited card included."""
    if isinstance(value, dict):
        return {plain(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return plain(value)


def _front_matter(front: dict) -> str:
    # One line per value (no line breaks left), quoted wherever YAML needs it: nothing can close the block early.
    return "---\n" + yaml.safe_dump(_clean(front), sort_keys=False, allow_unicode=True, width=2**20) + "---\n"


def _model_index(checkpoint: str, evaluations: list[dict]) -> list[dict]:
    """The Hub's `model-index` form of the held-out results (one result per run and policy)."""
    results = [{
        "task": {"type": "text-generation", "name": "tool-using problem solving"},
        "dataset": {"type": f"score-{e['tasks']}", "name": f"{e['tasks']} tasks of run {e['run']}"},
        "metrics": [{"type": "accuracy", "name": f"{e['tasks']} success ({e['label']})", "value": e["success"]}],
    } for e in evaluations]
    return [{"name": checkpoint, "results": results}]


def training_card(ref: CheckpointRef, facts: TrainingFacts) -> str:
    """The README.md of a version being published."""
    checkpoint = f"{ref.name}/v{ref.version}"
    parents = lineage(facts.parent, facts.parent_path)
    front: dict[str, Any] = {"library_name": "peft" if facts.adapter else "transformers"}
    if parents:
        front["base_model"] = parents[0]
        front["base_model_relation"] = "adapter" if facts.adapter else "finetune"
    front["tags"] = ["score", facts.method, *(["lora"] if facts.adapter else [])]
    front["score"] = {"checkpoint": checkpoint, "lineage": parents, "job": plain(facts.job)}
    how = ("a PEFT LoRA adapter: load it with `peft` on its base model, or serve it with vLLM's `--lora-modules`"
           if facts.adapter else "a Hugging Face checkpoint: `AutoModelForCausalLM.from_pretrained` and vLLM load "
           "this folder as it is")
    body = [f"# {md_text(checkpoint)}", "",
            f"{METHODS[facts.method]} by the SCoRe trainer (job {md_text(facts.job)}). The folder is {how}.", "",
            "## Lineage", ""]
    if parents:
        body += [f"- Base model (root): {md_text(parents[-1])}",
                 "- Trained from, newest first: " + " → ".join(md_text(p) for p in parents), ""]
    else:
        body += ["No parent recorded.", ""]
    body += ["## Training data", "", *_table(("item", "value"), facts.data),
             "## Hyperparameters", "", *_table(("name", "value"), facts.hyperparameters),
             "## Training results", "", *_table(("metric", "value"), facts.metrics)]
    return _front_matter(front) + "\n" + "\n".join(body)


def _evaluation_section(evaluations: list[dict]) -> str:
    rows = [f"| {md_text(e['run'])} | {md_text(e['label'])} | {e['tasks']} | {e['success']:.1%} | "
            f"[{e['wilson_low']:.1%}, {e['wilson_high']:.1%}] | {e['solved']}/{e['n']} |" for e in evaluations]
    return "\n".join([
        EVAL_START, "## Held-out evaluation", "",
        "Success on each run's held-out tasks (or on validation tasks, where a run chose settings on them), with "
        "the 95% Wilson score interval over those tasks (one seed: it shows sampling noise over tasks, not over "
        "training runs).", "",
        "| run | policy | tasks | success | 95% CI (Wilson) | solved/n |", "|---|---|---|---|---|---|", *rows, "",
        EVAL_END, ""])


def record_evaluation(directory: Path, evaluation: Evaluation) -> Path:
    """Add or update `evaluation` in the card of the checkpoint in `directory`; its path.

    Keyed by run and policy: the same evaluation again replaces its row, never adds one. A card that is
    missing or foreign (no front matter of ours) keeps its text and gets the section appended once."""
    directory = Path(directory)
    # The series lock when the folder is a published version, so a concurrent update cannot lose a row.
    lock = directory.parent / ".lock" if (directory.parent / INDEX).is_file() else directory / f".{CARD}.lock"
    with file_lock(lock):
        front, body = read_card(directory)
        own = front.get("score") if isinstance(front.get("score"), dict) else {}
        checkpoint = plain(own.get("checkpoint") or directory.name)
        kept = [e for e in own.get("evaluations") or [] if isinstance(e, dict)
                and (e.get("run"), e.get("label")) != evaluation.key]
        try:
            kept = [Evaluation.model_validate(e).facts() for e in kept]
        except ValueError:
            kept = []  # an edited card with malformed rows: start the list again rather than render garbage
        evaluations = [*kept, evaluation.facts()]
        front = {**front, "score": {**own, "checkpoint": checkpoint, "evaluations": evaluations},
                 "model-index": _model_index(checkpoint, evaluations)}
        section = _evaluation_section(evaluations)
        if _EVAL_SECTION.search(body):
            first = iter([section])  # the first section is replaced, any copy an edit left behind removed
            body = _EVAL_SECTION.sub(lambda _: next(first, ""), body)
        else:
            body = (body.rstrip("\n") + "\n\n" if body.strip() else f"# {md_text(checkpoint)}\n\n") + section
        text = _front_matter(front) + ("" if body.startswith("\n") else "\n") + body
        card = write_text_atomic(directory / CARD, text)
        os.chmod(card, 0o644)  # readable by every user of a shared SCORE_HOME, as the weights beside it
        return card
