"""Every benchmark runs as the README shows it (`.venv/bin/python bench/<name>.py`).

Run that way, bench/ comes first on sys.path, so a benchmark named like a standard-library module
(bench/queue.py once did) shadows it for every import below, and the script dies before it starts.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name not in ("__init__.py", "report.py", "probes.py"))


def test_no_benchmark_shadows_a_standard_module():
    shadowing = [p.name for p in (ROOT / "bench").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == [], f"rename {shadowing}: run as scripts they hide the standard modules of the same name"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_starts_as_a_script(script):
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
