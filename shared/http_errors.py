"""Reading the services' error answers on the client side: which statuses are worth a retry, and the message of
the error envelope (`shared/errors.py` writes it). No web framework imported, so the CLI stays quick to start."""

from __future__ import annotations

import json

# The service is restarting or overloaded: a retry may succeed. Any other 4xx is the caller's mistake.
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


def error_message(response) -> str:
    """`error.message` of an error envelope; else the body as JSON, or its text (an httpx or requests response)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return json.dumps(body)
