"""The one error envelope, `{"error": {"code", "message", "field"?}}`, for every error the API answers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("api")

_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    429: "busy",
    501: "unsupported",
    503: "backend_unavailable",
    504: "timeout",
    500: "internal",
}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def envelope(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    error: dict[str, str] = {"code": _CODES.get(status, "internal"), "message": message}
    if field:
        error["field"] = field
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _field_of(loc: tuple) -> str | None:
    """The request field a pydantic error points at: ("body", "width") -> "width"."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def _message(err: dict) -> str:
    field = _field_of(tuple(err.get("loc", ())))
    if err.get("type") == "extra_forbidden":
        return f"unknown field {field!r}"
    if err.get("type") == "json_invalid":
        return "the body is not valid JSON"
    return f"{field}: {err.get('msg', 'invalid')}" if field else err.get("msg", "invalid request")


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return envelope(exc.status, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = tuple(first.get("loc", ()))
        if loc == ("body",) and first.get("type") in {"missing", "model_attributes_type", "dict_type"}:
            return envelope(422, "the body must be a JSON object, sent as content-type: application/json")
        field = None if first.get("type") == "json_invalid" else _field_of(loc)
        return envelope(422, "; ".join(_message(e) for e in errors), field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return envelope(404, f"no route {request.url.path}")
        if exc.status_code == 405:
            return envelope(405, f"{request.method} is not allowed on {request.url.path}", headers=exc.headers)
        return envelope(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("request %s failed", request_id)
        return envelope(500, f"internal error; request id {request_id}")
