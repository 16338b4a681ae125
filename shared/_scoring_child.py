"""The scorer process of `shared.scoring_pool`: math-verify comparisons, one JSON line in, one out.

    python -m shared._scoring_child MEMORY_BYTES

Input lines `{"p": prediction, "g": gold}`, output lines `{"equal": bool}`. The parent kills this process
when a call runs past its time limit; memory is bounded here with RLIMIT_AS (a MemoryError is "not equal",
and a crash is the parent's timeout). It exits when its input closes or its parent dies.
"""

from __future__ import annotations

import json
import resource
import sys

from shared.processes import die_with_parent


def main() -> None:
    die_with_parent()
    memory_bytes = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.setrecursionlimit(2000)  # deep nesting ends in RecursionError, not a C stack overflow

    from shared.scoring import math_verify_equal  # sympy and math-verify: about a second

    # The first parses build math-verify's grammars and caches (seconds on a busy machine): done here, before
    # "ready", so they are not charged to the first caller's time limit.
    math_verify_equal("$\\frac{1}{2}$", "0.5")
    math_verify_equal("\\boxed{464}", "464")
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            equal = math_verify_equal(str(request["p"]), str(request["g"]))
        except (MemoryError, RecursionError, Exception):  # any failure to compare is "not equal"
            equal = False
        out.write(json.dumps({"equal": bool(equal)}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
