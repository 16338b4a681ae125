"""Versioned checkpoints under `SCORE_HOME/checkpoints/<name>/v<N>/`, with a lineage index.

Layout:
    checkpoints/<name>/v<N>/     a Hugging Face checkpoint (config, safetensors, tokenizer + chat template), or a
                                 PEFT LoRA adapter (adapter_config.json, adapter safetensors, tokenizer); with
                                 its model card, README.md (`shared/model_card.py`), when the publisher gives one
    checkpoints/<name>/index.json  every published version: parent, job, metrics, time
    checkpoints/<name>/.lock       serialises publishing across processes

A version directory appears only complete (written under a temporary name, then renamed), and it is
added to the index after the rename, so both the student service (which loads `v<N>` by path) and the
index never see half a checkpoint. Versions start at 1; version 0 is a model service's initial weights.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from shared.fsutil import atomic_directory, file_lock, remove_leftovers, write_json_atomic
from shared.names import NAME_PATTERN, SAFE_NAME
from shared.schemas.checkpoints import Checkpoint

INDEX = "index.json"
_NAME = SAFE_NAME
_REF = re.compile(rf"^(?P<name>{NAME_PATTERN})(?:[/@]v?(?P<version>\d+))?$")


class CheckpointRef(Checkpoint):
    """One published checkpoint version (an index row) and where it came from."""

    parent: str | None = Field(default=None, description="What it was trained from: `name/vN`, a path, or `builtin:<role>`.")
    job_id: str | None = Field(default=None, description="Trainer job or RL session that wrote it.")
    created_at: float = Field(default_factory=time.time, description="Unix time of publication.")
    metrics: dict = Field(default_factory=dict, description="Training metrics at publication (loss, steps, ...).")

    def identity(self) -> Checkpoint:
        """The version alone, without its lineage: what the services pass to each other."""
        return Checkpoint(name=self.name, version=self.version, path=self.path)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"checkpoint name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


class CheckpointStore:
    """Publish and look up checkpoint versions under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[CheckpointRef]:
        index = self.root / check_name(name) / INDEX
        if not index.is_file():
            return []
        return [CheckpointRef.model_validate(row) for row in json.loads(index.read_text())["versions"]]

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / INDEX).is_file())

    def latest(self, name: str) -> CheckpointRef | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def get(self, name: str, version: int | None = None) -> CheckpointRef:
        """A published version (the latest when `version` is None); KeyError names what is missing."""
        versions = self.versions(name)
        if not versions:
            raise KeyError(f"no checkpoint named {name!r} under {self.root}")
        if version is None:
            return versions[-1]
        for ref in versions:
            if ref.version == version:
                return ref
        raise KeyError(f"checkpoint {name!r} has no version {version} (versions: {[r.version for r in versions]})")

    def resolve(self, ref: str) -> CheckpointRef | None:
        """`name`, `name/vN`, `name@N` -> the published ref; None when `ref` is not a known checkpoint name."""
        match = _REF.match(ref.strip())
        if not match or not (self.root / match["name"] / INDEX).is_file():
            return None
        version = match["version"]
        return self.get(match["name"], int(version) if version is not None else None)

    def publish(
        self,
        name: str,
        write: Callable[[Path], None],
        *,
        parent: str | None = None,
        job_id: str | None = None,
        metrics: dict | None = None,
        card: Callable[[CheckpointRef], str] | None = None,
    ) -> CheckpointRef:
        """Allocate the next version, let `write(directory)` fill it, then make it visible atomically.

        `card(ref)` gives the version's model card, written as README.md before the directory appears."""
        series = self.root / check_name(name)
        with file_lock(series / ".lock"):
            remove_leftovers(series)
            versions = self.versions(name)
            version = versions[-1].version + 1 if versions else 1
            target = series / f"v{version}"
            ref = CheckpointRef(
                name=name, version=version, path=str(target), parent=parent, job_id=job_id, metrics=metrics or {}
            )
            with atomic_directory(target) as tmp:
                write(tmp)
                if card is not None:
                    (tmp / "README.md").write_text(card(ref), encoding="utf-8")  # replaces PEFT's template card
            write_json_atomic(series / INDEX, {"name": name, "versions": [r.model_dump() for r in [*versions, ref]]})
        return ref

    def save_model(self, name: str, model, tokenizer, **publish_options) -> CheckpointRef:
        """Publish a transformers model and its tokenizer (safetensors + chat template) as the next version;
        `publish_options` are `publish`'s (parent, job_id, metrics, card)."""

        def write(directory: Path) -> None:
            model.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)

        return self.publish(name, write, **publish_options)


def resolve_model(ref: str | None, *, home: Path, default_role: str = "student",
                  roots: list[Path] | None = None) -> tuple[Path, str]:
    """A model reference -> (checkpoint directory, lineage label).

    Accepted: None/"" (the built-in tiny model of `default_role`), `builtin:<role>`, a published checkpoint
    (`name`, `name/vN`, `name@N`), or a local Hugging Face checkpoint or LoRA adapter directory. Unknown
    references raise KeyError naming what was looked for. With `roots` (references from requests), a
    directory must lie under one of them (`shared.paths`), else ValueError.
    """
    from shared.models.builtin import MODELS, ensure_builtin_model  # building pulls in the task suite

    if ref is None or not str(ref).strip():
        return ensure_builtin_model(default_role, home), f"builtin:{default_role}"
    ref = str(ref).strip()
    if ref.startswith("builtin:"):
        role = ref.split(":", 1)[1]
        if role not in MODELS:
            raise KeyError(f"unknown built-in model {ref!r}; available: {', '.join('builtin:' + r for r in MODELS)}")
        return ensure_builtin_model(role, home), ref
    published = CheckpointStore(home / "checkpoints").resolve(ref)
    if published is not None:
        return Path(published.path), published.reference
    unknown = KeyError(f"{ref!r} is neither a published checkpoint (name, name/vN) nor a checkpoint directory")
    path = Path(ref).expanduser()
    if roots is not None:
        from shared.paths import confined

        if not (path.is_absolute() or "/" in ref or ref.startswith((".", "~"))):
            raise unknown  # a bare name that is not published; never looked up in the service's cwd
        path = confined(path, roots, what="checkpoint directory")  # PathRefused is a ValueError
    # adapter_config.json: a LoRA adapter directory (shared.models.loading loads it on its base).
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path, str(path)
    raise unknown


def served_name(label: str) -> str:
    """The name a model service serves `resolve_model`'s label under: a directory by its folder name (no host
    path in `/v1/models`), a built-in model or published checkpoint by its label (`builtin:teacher`, `name/vN`)."""
    return Path(label).name if Path(label).is_absolute() else label
