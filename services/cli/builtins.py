"""Built-in models a command needs, built before the services start, with a line saying so.

Some built-in models are built on first use only (`shared.models.builtin.ON_DEMAND_ROLES`: minutes to tens of
minutes on 2 cores). Building them here, not inside the service that first asks, shows a first run why it
waits instead of a service that is not ready or a job that sits in `running` for minutes.
"""

from __future__ import annotations

import time
from pathlib import Path


def prepare_builtin(reference: str | None, home: Path, what: str) -> None:
    """Build `builtin:<role>` into `home` if it is not current; anything else (a path, a checkpoint) is left."""
    if not reference or not str(reference).startswith("builtin:"):
        return
    from shared.models.builtin import MODELS, builtin_model_dir, ensure_builtin_model, is_current_builtin

    role = str(reference).split(":", 1)[1]
    if role not in MODELS or is_current_builtin(role, home):
        return  # an unknown role is refused, with the list of roles, by whoever resolves it
    print(f"building the built-in {what} {reference} into {builtin_model_dir(role, home)} "
          "(first use; minutes on 2 cores, then cached) ...", flush=True)
    started = time.monotonic()
    ensure_builtin_model(role, home)
    print(f"{what} built in {time.monotonic() - started:.0f}s", flush=True)


def cold_start_base(run_config: dict) -> str | None:
    """The checkpoint a run's cold start fine-tunes (`bc_init.base`), from a run config as submitted."""
    return ((run_config or {}).get("bc_init") or {}).get("base")
