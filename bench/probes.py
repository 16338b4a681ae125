"""What the benches read from a running service process: its CPU time and its engine's counters."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and of its reaped children (sandboxes, training processes):
    what a side-by-side comparison can quote when neighbours on a shared box make wall time swing."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def engine_counters(url: str) -> dict[str, float]:
    """The student engine's `score_engine_total` counters (prefill, cached and generated tokens, batches, ...)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {name: float(value) for name, value in
            re.findall(r'score_engine_total\{counter="(\w+)",service="student"\} (\S+)', text)}
