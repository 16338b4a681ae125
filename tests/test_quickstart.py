"""The README's quick start is what CI runs (scripts/quickstart.sh): two make targets, set-up included."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    """The commands scripts/quickstart.sh would run, read with its own extraction."""
    script = (ROOT / "scripts" / "quickstart.sh").read_text()
    extract = script[script.index("mapfile"):script.index("README.md)") + len("README.md)")]
    listed = subprocess.run(["bash", "-c", f"{extract}\nprintf '%s\\n' \"${{commands[@]}}\""], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    return listed.stdout.splitlines()


def test_quickstart_is_one_command_for_the_demo_and_one_for_the_tests():
    assert quickstart_commands() == ["make demo", "make test"]


def test_each_quickstart_target_sets_up_from_nothing():
    makefile = (ROOT / "Makefile").read_text()
    for target, runs in (("demo", "score demo"), ("test", "pytest")):
        rule = re.search(rf"^{target}: (.*)\n((?:\t.*\n)+)", makefile, re.M)
        assert rule, target
        assert "setup" in rule.group(1).split() and runs in rule.group(2)


def test_ci_runs_the_quickstart():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/quickstart.sh" in ci and "docker-compose config -q" in ci
