"""Build-or-load the built-in tiny models (no downloads), cached under SCORE_HOME.

Layout under `home/models/`:
    builtin/tokenizer/   the one tokenizer every role shares (student and teacher need one vocabulary)
    builtin/<role>/      a Hugging Face checkpoint: config.json, model.safetensors,
                         generation_config.json, tokenizer files with the chat template
    .builtin.lock        serialises builds across processes

Each built directory carries `builtin.json`, a manifest with the hash of the recipe that made it.
A directory whose hash differs from the current recipe is rebuilt. Builds happen in a temporary
directory beside the target and are renamed into place, so a directory with a manifest is complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer

from shared.agent.prompts import AFTER_PLAN, OBSERVATION_PREFIX, SYSTEM_PROMPT, TAGS
from shared.models.tiny import ROLE_SIZES, TINY_SIZES, build_tiny_model
from shared.models.tokenizer import CHATML_TEMPLATE, SPECIAL_TOKENS, train_tokenizer
from shared.settings import get_settings

logger = logging.getLogger("score.models")

ROLES = ("student", "teacher")
# Bump when the way models or tokenizer are built changes in a way the recipe dicts do not capture.
RECIPE_VERSION = 1
VOCAB_SIZE = 2048
ROLE_SEEDS = {"student": 1, "teacher": 2}
# BPE training time grows with the corpus; a few MB already gives a stable 2k vocabulary.
MAX_CORPUS_CHARS = 4_000_000
MANIFEST = "builtin.json"
TOKENIZER_DIRNAME = "tokenizer"


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else get_settings().home


def builtin_model_dir(role: str, home: Path | None = None) -> Path:
    """Where the built-in model of `role` lives (built or not)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; built-in roles: {', '.join(ROLES)}")
    return _home(home) / "models" / "builtin" / role


# --- recipe ------------------------------------------------------------------------------------


def _cap_chars(texts: list[str], max_chars: int) -> list[str]:
    """Every k-th text, with k chosen so the total stays near `max_chars` (deterministic).

    Striding rather than truncating keeps every part of the corpus (questions, steps, documents)
    represented when the task suite grows.
    """
    total = sum(map(len, texts))
    stride = -(-total // max_chars)  # ceil
    return texts if stride <= 1 else texts[::stride]


@lru_cache(maxsize=1)
def tokenizer_training_texts() -> tuple[str, ...]:
    """The agent's fixed texts, then the built-in task corpus (capped in size)."""
    # Imported here: the task suite (knowledge base, generators) is only needed to build.
    from shared.tasks.builtin import tokenizer_corpus

    fixed = [SYSTEM_PROMPT, OBSERVATION_PREFIX, AFTER_PLAN, *TAGS]
    return tuple(fixed + _cap_chars(list(tokenizer_corpus()), MAX_CORPUS_CHARS))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _tokenizer_recipe(texts: tuple[str, ...]) -> dict:
    return {
        "version": RECIPE_VERSION,
        "vocab_size": VOCAB_SIZE,
        "special_tokens": list(SPECIAL_TOKENS),
        "tags": list(TAGS),
        "chat_template": CHATML_TEMPLATE,
        # The corpus itself: when the task suite changes, the tokenizer is retrained.
        "corpus_sha256": _digest(list(texts)),
    }


def _model_recipe(role: str, tokenizer_hash: str) -> dict:
    size = ROLE_SIZES[role]
    return {
        "version": RECIPE_VERSION,
        "role": role,
        "size": size,
        "shape": TINY_SIZES[size],
        "seed": ROLE_SEEDS[role],
        "tokenizer": tokenizer_hash,  # a retrained tokenizer invalidates every model built on it
    }


# --- manifests and atomic publication ----------------------------------------------------------


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _is_current(directory: Path, recipe_hash: str) -> bool:
    manifest = _read_manifest(directory)
    return manifest is not None and manifest.get("recipe_hash") == recipe_hash


def _write_manifest(directory: Path, **fields) -> None:
    fields.update(built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), build_id=uuid.uuid4().hex)
    (directory / MANIFEST).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _building(target: Path) -> Iterator[Path]:
    """A temp dir beside `target`; on success it replaces `target` by rename, else it is removed."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # mkdtemp makes the dir private (0700); other users of a shared SCORE_HOME must read it.
    os.chmod(tmp, 0o755)
    # rename() cannot replace a non-empty directory: move the stale one aside first.
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Temp dirs of builds that crashed; only called under the lock, so none is in use."""
    for path in root.glob(".*.tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".*.old-*"):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, even if we crash
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- builds ------------------------------------------------------------------------------------


def _build_tokenizer(target: Path, texts: tuple[str, ...], recipe_hash: str) -> None:
    started = time.perf_counter()
    logger.info("training the built-in tokenizer (vocab %d) on %d texts, %d chars",
                VOCAB_SIZE, len(texts), sum(map(len, texts)))
    tokenizer = train_tokenizer(texts, vocab_size=VOCAB_SIZE)
    with _building(target) as tmp:
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp, kind="tokenizer", vocab_size=len(tokenizer), recipe_hash=recipe_hash,
                        recipe_version=RECIPE_VERSION, texts=len(texts),
                        build_seconds=round(time.perf_counter() - started, 3))
    logger.info("built tokenizer (%d tokens) in %.2fs -> %s", len(tokenizer), time.perf_counter() - started, target)


def _build_model(role: str, target: Path, tokenizer_dir: Path, recipe: dict, recipe_hash: str) -> None:
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, padding_side="left")
    model = build_tiny_model(recipe["size"], tokenizer, seed=recipe["seed"])
    params = sum(p.numel() for p in model.parameters())
    with _building(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp, kind="model", role=role, size=recipe["size"], params=params, seed=recipe["seed"],
                        vocab_size=len(tokenizer), recipe_hash=recipe_hash, recipe_version=RECIPE_VERSION,
                        tokenizer_hash=recipe["tokenizer"], build_seconds=round(time.perf_counter() - started, 3))
    logger.info("built %s model (%s, %.2fM params) in %.2fs -> %s",
                role, recipe["size"], params / 1e6, time.perf_counter() - started, target)


def ensure_builtin_model(role: str, home: Path | None = None) -> Path:
    """The built-in model directory of `role`, building it (and the shared tokenizer) if needed.

    Safe to call from several processes at once: one builds, the others wait and reuse it.
    """
    target = builtin_model_dir(role, home)
    root = target.parent
    texts = tokenizer_training_texts()
    tokenizer_hash = _digest(_tokenizer_recipe(texts))
    recipe = _model_recipe(role, tokenizer_hash)
    recipe_hash = _digest(recipe)
    if _is_current(target, recipe_hash):  # the common case needs no lock
        return target

    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root.parent / ".builtin.lock"):
        if _is_current(target, recipe_hash):  # built by another process while we waited
            return target
        started = time.perf_counter()
        _remove_leftovers(root)
        tokenizer_dir = root / TOKENIZER_DIRNAME
        if not _is_current(tokenizer_dir, tokenizer_hash):
            _build_tokenizer(tokenizer_dir, texts, tokenizer_hash)
        _build_model(role, target, tokenizer_dir, recipe, recipe_hash)
        logger.info("built-in %s ready in %.2fs", role, time.perf_counter() - started)
    return target
