"""create_app(): the FastAPI application. Routes come from the registry; the lifespan owns the Triton client."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from email.message import Message
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute

from . import errors
from .auth import DOCUMENTED_SCHEMES
from .docs import ASSETS_URL, install_docs
from .generate import generation_endpoint, openapi_of, openapi_of_unsupported, unsupported_endpoint
from .job_routes import JOB_PATH_PREFIX, build_job_router
from .middleware import GatewayMiddleware
from .service import SERVICE_PATHS, build_service_router
from .settings import Settings
from .state import ApiState

DOC_PATHS = ("/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


def parse_json(body: bytes, content_type: str | None = None) -> Any:
    """A JSON body as RFC 8259 has it: UTF-8 (a BOM tolerated) whatever a charset parameter says. Every failure is
    a JSONDecodeError saying what is wrong, which FastAPI answers as a 422; any other exception would be its bare
    400 "There was an error parsing the body"."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        header = Message()
        header["content-type"] = content_type or ""
        charset = header.get_param("charset")
        note = f"; JSON is read as UTF-8, not as the {charset} the content-type names" if charset else ""
        raise json.JSONDecodeError(f"not UTF-8: byte 0x{body[e.start]:02x} at offset {e.start}{note}", "", 0) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError as e:  # the C scanner nests as deep as the interpreter's recursion limit
        raise json.JSONDecodeError("arrays or objects nest deeper than the parser's limit", "", 0) from e
    except ValueError as e:  # an integer over sys.get_int_max_str_digits()
        limit = sys.get_int_max_str_digits()
        raise json.JSONDecodeError(f"a number has more than {limit} digits, the parser's limit", "", 0) from e


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body(), self.headers.get("content-type"))
        return self._json


class JsonRoute(APIRoute):
    """A route whose JSON body goes through parse_json (FastAPI calls request.json())."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return handle


def _label_of(path: str) -> str:
    if path.startswith(ASSETS_URL):
        return ASSETS_URL
    if path.startswith(JOB_PATH_PREFIX):  # one label for every job's id
        return "/v1/jobs/{id}/result" if path.endswith("/result") else "/v1/jobs/{id}"
    return "other"


def create_app(settings: Settings | None = None) -> FastAPI:
    """One app serving the routes of `settings.served_groups` (default: every group of the registry)."""
    settings = settings or Settings()
    state = ApiState(settings)
    keys = state.keys
    generating = {r.path for r in state.routes}
    refused = {r.path for r in state.unsupported}
    protected = generating | refused | {"/v1/models"}
    known = generating | refused | set(SERVICE_PATHS) | set(DOC_PATHS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The gRPC aio channel belongs to the serving event loop, so it is made here, not at import.
        state.backend()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="RYLA diffusion API",
        version="0.1.0",
        summary="Image generation on Triton behind the product's REST contract (shared/api.md).",
        lifespan=lifespan,
        # The product's client may POST JSON without a content-type; a body is still parsed only as JSON.
        strict_content_type=False,
        # /flux/ is a 404 that names /flux (errors.py), not a 307 that few clients repeat a POST for.
        redirect_slashes=False,
        # Our own pages, whose assets are served here (docs.py), not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.router.route_class = JsonRoute
    app.state.api = state
    errors.install(app)
    install_docs(app)
    for route in state.routes:
        app.add_api_route(
            route.path,
            generation_endpoint(route),
            methods=["POST"],
            dependencies=DOCUMENTED_SCHEMES if keys.enabled else None,
            **openapi_of(route),
        )
    # What the gateway (middleware.py) can answer on any route, before the route itself runs.
    gateway = errors.openapi_responses(408, 413, 500)
    for refusal in state.unsupported:
        doc = openapi_of_unsupported(refusal)
        app.add_api_route(
            refusal.path,
            unsupported_endpoint(refusal),
            methods=["POST"],
            status_code=501,
            dependencies=DOCUMENTED_SCHEMES if keys.enabled else None,
            **{**doc, "responses": {**gateway, **doc["responses"]}},
        )
    app.include_router(build_service_router(protect_models=keys.enabled), responses=gateway)
    app.include_router(build_job_router(protected=keys.enabled), responses=gateway)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        drain_bytes=settings.drain_bytes,
        keys=keys,
        protected=lambda path: path in protected or path.startswith(JOB_PATH_PREFIX),
        metrics=state.metrics,
        # Unknown paths share one label: a scanner cannot blow up the metrics' cardinality.
        route_label=lambda path: path if path in known else _label_of(path),
    )
    return app
