"""One error envelope for every service, built in one place (vLLM's `ErrorResponse` shape)."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("score.errors")


class ErrorInfo(BaseModel):
    message: str = Field(description="What went wrong and, for bad input, which field.")
    type: str = Field(description="Error class, e.g. `invalid_request_error`, `not_found`, `internal_error`.")
    param: str | None = Field(default=None, description="The offending field as a dotted path, e.g. `body.items.0.task`.")
    code: int = Field(description="HTTP status code.")


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ServiceError(Exception):
    """Raised by handlers; mapped to the envelope with its status code."""

    status_code = HTTPStatus.BAD_REQUEST
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFoundError(ServiceError):
    status_code = HTTPStatus.NOT_FOUND
    error_type = "not_found"


class ConflictError(ServiceError):
    status_code = HTTPStatus.CONFLICT
    error_type = "conflict"


class UnprocessableError(ServiceError):
    status_code = HTTPStatus.UNPROCESSABLE_ENTITY
    error_type = "invalid_request_error"


class UnavailableError(ServiceError):
    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    error_type = "unavailable"


def create_error_response(status: int, message: str, *, error_type: str, param: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(message=message, type=error_type, param=param, code=int(status)))
    return JSONResponse(status_code=int(status), content=body.model_dump())


def _location(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error (validation, HTTP, ours, unexpected) through the one envelope."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = _location(tuple(first.get("loc", ())))
        parts = [f"{_location(tuple(e.get('loc', ())))}: {e.get('msg', '')}" for e in errors[:5]]
        return create_error_response(422, "; ".join(parts), error_type="invalid_request_error", param=param or None)

    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return create_error_response(exc.status_code, exc.message, error_type=exc.error_type, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI answers 422 for a body that is not JSON but 400 for one that is not even text (bad UTF-8);
            # both are the same client mistake, so both are 422 naming the body.
            return create_error_response(422, f"body: not a JSON document ({exc.__cause__})",
                                         error_type="invalid_request_error", param="body")
        error_type = "not_found" if exc.status_code == 404 else "http_error"
        return create_error_response(exc.status_code, str(exc.detail), error_type=error_type)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return create_error_response(500, f"internal error: {type(exc).__name__}", error_type="internal_error")


ERROR_RESPONSES = {
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorResponse, "description": "Request body larger than SCORE_MAX_BODY_BYTES."},
    422: {"model": ErrorResponse, "description": "Invalid request; `error.param` names the field."},
    500: {"model": ErrorResponse, "description": "Unexpected server error."},
}
