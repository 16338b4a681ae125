"""`score serve SERVICE`: run one service in this process (what docker compose runs)."""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.settings import DEFAULT_PORTS


# Each service package's `app` module provides `app_from_args(args, settings) -> FastAPI`; its config model's
# validators hold the rules between settings (engine and base URL, ...), whichever way they were given.
SERVICES = ("coordinator", "student", "teacher", "trainer")


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    from shared.observability import configure_logging
    from shared.settings import Settings, describe_invalid

    settings = Settings()
    configure_logging(settings.log_level, args.service, settings.log_format)
    module = importlib.import_module(f"services.{args.service}.app")
    try:
        app = module.app_from_args(args, settings)
    except ValidationError as exc:  # the service's settings, from flags and environment, break a rule
        print("\n".join(f"error: {line}" for line in describe_invalid(exc).splitlines()), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = args.port or DEFAULT_PORTS[args.service]
    # log_config=None: uvicorn's own lines go through the service's format too (json stays one object a line)
    uvicorn.run(app, host=args.host, port=port, log_level=settings.log_level, access_log=False, log_config=None)
    return 0
