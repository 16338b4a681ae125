"""Crash-safe file system primitives: a cross-process lock, atomic directories and atomic JSON files.

A directory written with `atomic_directory` is either absent or complete: it is filled under a temporary
name beside the target and renamed into place, so a reader never sees half a checkpoint or model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes on `path` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, even if we crash
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A temp dir beside `target`; on success it replaces `target` by rename, else it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
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


def remove_leftovers(root: Path) -> None:
    """Temp dirs of writes that crashed; call only under the lock that guards `root`, so none is in use."""
    for pattern in (".*.tmp-*", ".*.old-*"):
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def atomic_write(path: Path, write) -> Path:
    """Call `write(binary_handle)` on a temp file beside `path`, fsync it, then rename over `path`.

    Readers see the old file or the new one, never half of one; a failed write leaves no temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json_atomic(path: Path, data) -> None:
    """Write JSON (indented, sorted keys) atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
