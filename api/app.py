"""create_app(): the FastAPI application. Routes come from the registry; the lifespan owns the Triton client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import errors
from .auth import DOCUMENTED_SCHEMES, KeyChecker
from .generate import generation_endpoint, openapi_of, openapi_of_unsupported, unsupported_endpoint
from .middleware import GatewayMiddleware
from .service import SERVICE_PATHS, build_service_router
from .settings import Settings
from .state import ApiState

DOC_PATHS = ("/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


def create_app(settings: Settings | None = None) -> FastAPI:
    """One app serving the routes of `settings.served_groups` (default: every group of the registry)."""
    settings = settings or Settings()
    state = ApiState(settings)
    keys = KeyChecker(settings.api_keys)
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
    )
    app.state.api = state
    errors.install(app)
    for route in state.routes:
        app.add_api_route(
            route.path,
            generation_endpoint(route),
            methods=["POST"],
            dependencies=DOCUMENTED_SCHEMES if keys.enabled else None,
            **openapi_of(route),
        )
    for refusal in state.unsupported:
        app.add_api_route(
            refusal.path,
            unsupported_endpoint(refusal),
            methods=["POST"],
            status_code=501,
            dependencies=DOCUMENTED_SCHEMES if keys.enabled else None,
            **openapi_of_unsupported(refusal),
        )
    app.include_router(build_service_router(protect_models=keys.enabled))
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        keys=keys,
        protected=protected.__contains__,
        metrics=state.metrics,
        # Unknown paths share one label: a scanner cannot blow up the metrics' cardinality.
        route_label=lambda path: path if path in known else "other",
    )
    return app
