"""Fail when an installed distribution is not pinned in a lock file at the version installed.

    python scripts/check_lock.py requirements.lock

The image installs the project's dependencies with the lock as a constraint; this check makes sure nothing
came from outside the lock (a dependency the lock forgot would otherwise float to the index's newest release).
A local version label (torch 2.13.0+cpu) satisfies the lock's 2.13.0, as it does for pip. Standard library only.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

# The environment's own installers are not part of what the project runs on.
IGNORED = {"pip"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path, encoding="utf-8"):
        requirement = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in requirement:
            name, version = requirement.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


def problems(pins: dict[str, str], project: str = "score-distill") -> list[str]:
    found = []
    for dist in metadata.distributions():
        name, version = normalize(dist.metadata["Name"]), dist.version
        if name in IGNORED or name == project:
            continue
        if name not in pins:
            found.append(f"{name} {version} is installed but not in the lock")
        elif version.split("+", 1)[0] != pins[name]:
            found.append(f"{name} {version} is installed, the lock pins {pins[name]}")
    return sorted(found)


def main(argv: list[str]) -> int:
    found = problems(read_lock(argv[1]))
    for problem in found:
        print(problem, file=sys.stderr)
    if not found:
        print(f"every installed distribution is pinned in {argv[1]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
