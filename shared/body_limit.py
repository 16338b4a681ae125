"""Request bodies: the bearer token is checked before a byte of the body is read, and the body is bounded.

FastAPI reads and parses a route's body before its dependencies run, so a token check written as a
dependency comes after the cost: a 19 MiB unauthenticated JSON body grew a service by about 480 MiB while
pydantic parsed it. This ASGI middleware sits in front of the app and, for every request that may carry a
body (anything but GET, HEAD, OPTIONS), answers 401 before reading when the token is missing or wrong; then,
for every request, 413 when `Content-Length` is over `SCORE_MAX_BODY_BYTES`, and 413 as soon as the bytes
actually received pass it (chunked uploads, lying headers). The body is collected here, bounded, and
handed to the app unchanged; everything after it (a client's disconnect) passes straight through.
"""

from __future__ import annotations

from shared.auth import token_matches
from shared.errors import create_error_response

_NO_BODY_METHODS = {"GET", "HEAD", "OPTIONS"}


class BodyLimitMiddleware:
    def __init__(self, app, *, max_bytes: int, token: str | None) -> None:
        self.app, self.max_bytes, self.token = app, max_bytes, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.token is not None and scope["method"] not in _NO_BODY_METHODS:
            if not token_matches(headers.get("authorization", ""), self.token):
                await self._refuse(scope, receive, send, 401, "missing or invalid bearer token",
                                   "unauthorized", "header.authorization")
                return
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send, f"Content-Length {int(declared)}")
            return
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # a disconnect before the body ended: let the app see it
                messages.append(message)
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, f"more than {self.max_bytes} bytes received")
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send, seen: str) -> None:
        await self._refuse(scope, receive, send, 413,
                           f"request body too large ({seen}); the limit is {self.max_bytes} bytes "
                           "(SCORE_MAX_BODY_BYTES)", "request_too_large", "body")

    @staticmethod
    async def _refuse(scope, receive, send, status: int, message: str, error_type: str, param: str) -> None:
        response = create_error_response(status, message, error_type=error_type, param=param)
        # The unread rest of the body makes the connection unusable for another request.
        response.headers["connection"] = "close"
        await response(scope, receive, send)
