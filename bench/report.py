"""What every benchmark ends with: a two-column table on stdout and the full result as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def report(rows: list[tuple[str, str]], result: dict, out: str | Path) -> None:
    width = max(len(label) for label, _ in rows) + 2
    print(f"{'measure':<{width}}{'value':>14}")
    for label, value in rows:
        print(f"{label:<{width}}{value:>14}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
