"""The one error envelope, `{"error": {"code", "message", "field"?}}`, for every error the API answers."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("api")

# api.md, "Errors": the code is a function of the status.
CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "not_ready",
    413: "payload_too_large",
    422: "invalid_request",
    429: "busy",
    # nginx's "client closed request": never reaches the client (it left); metrics count the request as cancelled.
    499: "cancelled",
    500: "internal",
    501: "unsupported",
    503: "backend_unavailable",
    504: "timeout",
}


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(BaseModel):
    """Every error answer of the API (documented in OpenAPI)."""

    error: ErrorDetail


class ApiError(Exception):
    """Raised anywhere in a request; answered as the envelope with its status."""

    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def error_detail(status: int, message: str, field: str | None = None) -> dict[str, str]:
    """The envelope's `error`: the code of the status, the message, the field where one is at fault."""
    error = {"code": CODES.get(status, "internal"), "message": message}
    if field:
        error["field"] = field
    return error


def envelope_bytes(status: int, message: str, field: str | None = None) -> bytes:
    return json.dumps({"error": error_detail(status, message, field)}, separators=(",", ":")).encode()


def envelope(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(json.loads(envelope_bytes(status, message, field)), status_code=status, headers=headers)


def openapi_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses; naming 422 also replaces FastAPI's default validation schema."""
    return {s: {"model": ErrorEnvelope, "description": CODES[s]} for s in statuses}


def _field_of(loc: tuple) -> str | None:
    """The request field a pydantic error points at: ("body", "width") -> "width", ("body", "reference_images", 1)
    -> "reference_images[1]"."""
    field = ""
    # Only the leading "body" is FastAPI's: a client's field may be called "body" too.
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        field += f"[{part}]" if isinstance(part, int) else f".{part}" if field else str(part)
    return field or None


def _message(err: dict) -> str:
    field = _field_of(tuple(err.get("loc", ())))
    if err.get("type") == "extra_forbidden":
        return f"unknown field {field or ''!r}; this route does not take it"
    if err.get("type") == "json_invalid":
        return f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
    msg = err.get("msg", "invalid value")
    return f"{field}: {msg}" if field else msg


def validation_error(errors: list[dict]) -> ApiError:
    """Pydantic's errors as one 422: the first offending field is `field`, the message lists them all."""
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if loc == ("body",) and first.get("type") in {"missing", "model_attributes_type", "dict_type", "model_type"}:
        return ApiError(422, "the body must be a JSON object (content-type: application/json)")
    field = None if first.get("type") == "json_invalid" else _field_of(loc)
    return ApiError(422, "; ".join(_message(e) for e in errors) or "invalid request", field)


def _no_route(request: Request) -> str:
    path = request.url.path
    # No redirect for a trailing slash (redirect_slashes=False): a POST redirected by 307 reaches few clients intact.
    bare = path.rstrip("/")
    scope = {**request.scope, "path": bare}
    if bare and bare != path and any(r.matches(scope)[0] is not Match.NONE for r in request.app.router.routes):
        return f"no route {path}; did you mean {bare}?"
    return f"no route {path}"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        message = exc.message
        if exc.status >= 500 and exc.status not in (503, 504):
            # The id finds the logged cause; the cause itself stays in the log.
            message = f"{message}; request id {getattr(request.state, 'request_id', '-')}"
        return envelope(exc.status, message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        return envelope(err.status, err.message, err.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return envelope(404, _no_route(request))
        if exc.status_code == 405:
            # Starlette's exception carries the Allow header; keep it.
            return envelope(405, f"{request.method} is not allowed on {request.url.path}", headers=exc.headers)
        return envelope(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The stack trace goes to the log under the request id; the client gets only the id.
        request_id = getattr(request.state, "request_id", "-")
        log.exception("request %s failed", request_id)
        return envelope(500, f"internal error; request id {request_id}", headers={"x-request-id": request_id})
