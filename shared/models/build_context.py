"""How build-time training runs: a fixed number of torch threads and a seeded RNG, both the caller's again after."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded_threads(seed: int, threads: int):
    """Train with `threads` torch threads and the global RNG seeded with `seed`; the caller's thread count and RNG
    stream are restored afterwards (builds run inside services and tests, which must not notice them)."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous_threads)
