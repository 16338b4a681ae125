"""Bearer-token auth shared by every service: /health stays open, everything else needs the token when one is set."""

from __future__ import annotations

import hmac

from fastapi import Request

from shared.errors import ServiceError


class UnauthorizedError(ServiceError):
    status_code = 401
    error_type = "unauthorized"


def token_matches(authorization: str, token: str) -> bool:
    """Whether an `Authorization` header value carries `Bearer <token>` (constant-time comparison)."""
    scheme, _, supplied = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


def bearer_dependency(token: str | None):
    """A FastAPI dependency that checks `Authorization: Bearer <token>` (constant-time); a no-op without a token.

    Requests with a body are checked before the body is read as well (`shared.body_limit`); this dependency
    covers the rest (GET routes)."""

    async def _check(request: Request) -> None:
        if token is None:
            return
        if not token_matches(request.headers.get("authorization", ""), token):
            raise UnauthorizedError("missing or invalid bearer token", param="header.authorization")

    return _check
