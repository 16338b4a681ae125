"""Modules stay readable in one sitting: every module of `services/` and `shared/` is under MAX_LINES lines.

The one exception is the sandbox child's bootstrap: it is started as the text of one file (`python -S -c`)
inside the boundary, where it can import only the standard library, so it cannot be split into modules.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
WHOLE_BY_NECESSITY = {"shared/sandbox/_sandbox_child.py"}


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_the_exception_still_exists():
    """A moved or renamed child would silently drop out of the exception instead of being checked."""
    assert all((ROOT / path).is_file() for path in WHOLE_BY_NECESSITY)


def test_every_module_is_under_the_line_limit():
    too_long = {}
    for folder in ("services", "shared"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name not in WHOLE_BY_NECESSITY and line_count(path) >= MAX_LINES:
                too_long[name] = line_count(path)
    assert too_long == {}, f"modules of {MAX_LINES} lines or more (split them along a seam): {too_long}"
