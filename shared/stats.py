"""Small statistics for held-out success rates: Wilson intervals, exact McNemar tests, paired bootstrap CIs.

Pure functions of per-task 0/1 outcomes, so every figure in a report can be recomputed from them.
"""

from __future__ import annotations

import math
import random

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0/n and n/n the bounds are exactly 0 and 1; computed, they can miss by ~1e-17 (0/768 gives a lower bound
    # of 4e-19), which puts the rate outside its own interval and makes error bars negative.
    lower = 0.0 if successes <= 0 else max(0.0, centre - half)
    upper = 1.0 if successes >= n else min(1.0, centre + half)
    return lower, upper


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: `b` tasks only A solved, `c` only B solved
    (a binomial test of b against Binomial(b + c, 1/2)). 1.0 when there are no discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def discordant(a: dict[str, int], b: dict[str, int]) -> tuple[int, int]:
    """(tasks A solved and B did not, tasks B solved and A did not) over the task ids both have."""
    shared = a.keys() & b.keys()
    return (sum(1 for t in shared if a[t] and not b[t]), sum(1 for t in shared if b[t] and not a[t]))


def paired_bootstrap(diffs: list[int], *, samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of the mean of per-task paired differences (each -1, 0 or 1), resampling tasks."""
    if not diffs:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]
