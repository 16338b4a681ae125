"""Bearer-token auth shared by every service: /health stays open, everything else needs the token when one is set."""

from __future__ import annotations

import hmac

from fastapi import Request

from shared.errors import ServiceError


class UnauthorizedError(ServiceError):
    status_code = 401
    error_type = "unauthorized"


def bearer_dependency(token: str | None):
    """A FastAPI dependency that checks `Authorization: Bearer <token>` (constant-time); a no-op without a token."""

    async def _check(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), token.encode()):
            raise UnauthorizedError("missing or invalid bearer token", param="header.authorization")

    return _check
