"""Files and directories named in requests and run configs: only under SCORE_HOME or an operator's allow-list.

A request that names a path makes the service open it with the service's own rights: `/dev/zero` as a
task file grew the coordinator to 1.7 GB, and a checkpoint "directory" could be any directory the service
can read. So every such path is resolved (symbolic links followed, `..` removed) and must fall under one of
the roots (`Settings.path_roots`: SCORE_HOME, then SCORE_ALLOWED_PATHS); files must be regular files no
larger than a cap. Errors are `PathRefused`, a ValueError whose message says what to change; callers map it
to a 422 naming their field.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class PathRefused(ValueError):
    """A path outside the allowed roots, not of the kind expected, or too large."""


def confined(path: str | Path, roots: list[Path], *, what: str) -> Path:
    """`path` resolved, if it lies under one of `roots` (itself resolved); else PathRefused."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).expanduser().resolve()):
            return resolved
    allowed = ", ".join(str(root) for root in roots)
    raise PathRefused(f"{what} {str(path)!r} is outside the allowed directories ({allowed}); put it under "
                      "SCORE_HOME, or have the operator add its directory to SCORE_ALLOWED_PATHS")


def regular_file(path: str | Path, roots: list[Path], *, max_bytes: int, what: str) -> Path:
    """A confined path that is a regular file of at most `max_bytes` (not a device, FIFO or directory)."""
    resolved = confined(path, roots, what=what)
    try:
        info = os.stat(resolved)
    except OSError as exc:
        raise PathRefused(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise PathRefused(f"{what} {str(path)!r} is not a regular file")
    if info.st_size > max_bytes:
        raise PathRefused(f"{what} {str(path)!r} has {info.st_size} bytes; the limit is {max_bytes} "
                          "(SCORE_MAX_TASK_FILE_BYTES)")
    return resolved


def directory(path: str | Path, roots: list[Path], *, what: str) -> Path:
    """A confined path that is a directory."""
    resolved = confined(path, roots, what=what)
    if not resolved.is_dir():
        raise PathRefused(f"{what} {str(path)!r} is not a directory")
    return resolved
