"""What model code runs inside on this host: the sandbox report for /ready and a model service's start-up."""

from __future__ import annotations

import logging
from typing import Any

from shared.sandbox import boundary as boundary_module
from shared.sandbox.process import LAYERS, SandboxError, base_python
from shared.sandbox.sandbox import Sandbox

logger = logging.getLogger(__name__)


def sandbox_report(*, unconfined: bool = False) -> dict[str, Any]:
    """What model code runs inside on this host, for /ready and the start-up log: probed once per process.

    `ok` False means code execution is refused, and `problem` says what is missing and how to provide it."""
    if unconfined:
        logger.warning("SANDBOX UNCONFINED (SCORE_SANDBOX_UNCONFINED=1): model code runs WITHOUT the bwrap "
                       "boundary, with only in-process layers. Trusted development only; never in production.")
        boundary = boundary_module.Boundary(True, "none", problem=None)
    else:
        boundary = boundary_module.check(base_python())
    report: dict[str, Any] = {"ok": boundary.ok, "boundary": "bwrap" if boundary.mode != "none" else "none",
                              "mode": "unconfined" if unconfined else boundary.mode,
                              "bwrap": boundary.bwrap_version,
                              "nested_userns_blocked_by": boundary.nested_userns_blocked_by,
                              "problem": None if boundary.ok else
                              f"{boundary.problem}; {boundary_module.UNCONFINED_HINT}"}
    layers: tuple[str, ...] = ()
    if boundary.ok:
        try:
            with Sandbox(unconfined=unconfined) as sandbox:
                layers = sandbox.isolation
                for note in sandbox.inactive_layer_notes:
                    logger.info("sandbox layer inactive: %s", note)
        except (SandboxError, OSError) as exc:
            report.update(ok=False, problem=f"the sandbox probe failed: {exc}")
    report["layers"] = {layer: layer in layers for layer in LAYERS}
    return report


def prepare_service(*, unconfined: bool = False) -> dict[str, Any]:
    """At a model service's start: make the service process undumpable, check the boundary, log loudly."""
    undumpable = boundary_module.make_service_undumpable()
    if not undumpable:
        logger.warning("could not make the service process undumpable (PR_SET_DUMPABLE)")
    report = {**sandbox_report(unconfined=unconfined), "service_undumpable": undumpable}
    if not report["ok"]:
        logger.error("MODEL CODE EXECUTION REFUSED: %s", report["problem"])
    return report
