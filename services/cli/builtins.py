"""Built-in models a command needs, built before the services start, with a line saying so.

Some built-in models are built on first use only (`shared.models.builtin.ON_DEMAND_ROLES`: minutes to tens of
minutes on 2 cores). Building them here, not inside the service that first asks, shows a first run why it
waits instead of a service that is not ready or a job that sits in `running` for minutes.
"""

from __future__ import annotations

import time
from pathlib import Path


def builtin_role(reference) -> str | None:
    """The role of a `builtin:<role>` reference; None for anything else (a path, a published checkpoint)."""
    kind, _, role = str(reference or "").partition(":")
    return role if kind == "builtin" and role else None


def is_on_demand(reference) -> bool:
    """True for a built-in model that setup does not build (`ON_DEMAND_ROLES`): its first use builds it."""
    from shared.models.builtin import ON_DEMAND_ROLES

    return builtin_role(reference) in ON_DEMAND_ROLES


def prepare_builtin(reference: str | None, home: Path, what: str) -> None:
    """Build `builtin:<role>` into `home` if it is not current; anything else (a path, a checkpoint) is left."""
    from shared.models.builtin import MODELS, builtin_model_dir, ensure_builtin_model, is_current_builtin

    role = builtin_role(reference)
    if role not in MODELS or is_current_builtin(role, home):
        return  # not built-in, or unknown: refused, with the list of roles, by whoever resolves it
    print(f"building the built-in {what} {reference} into {builtin_model_dir(role, home)} "
          "(first use; minutes on 2 cores, then cached) ...", flush=True)
    started = time.monotonic()
    ensure_builtin_model(role, home)
    print(f"{what} built in {time.monotonic() - started:.0f}s", flush=True)


def cold_start_base(run_config: dict) -> str | None:
    """The checkpoint a run's cold start fine-tunes (`bc_init.base`), from a run config as submitted."""
    return ((run_config or {}).get("bc_init") or {}).get("base")
