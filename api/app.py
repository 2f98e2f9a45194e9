"""create_app(): the FastAPI application, its Triton client owned by the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import errors
from .backend import Backend
from .metrics import Metrics
from .middleware import GatewayMiddleware
from .routes import ApiState, build_router, make_gates, route_label, served_routes
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    protected = {r.path for r in served_routes(settings)} | {"/v1/models"}
    state = ApiState(settings=settings, metrics=metrics, gates=make_gates(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The gRPC aio channel belongs to the serving event loop, so it is made here, not at import.
        state.backend = Backend(settings.triton_grpc_url, settings.retry_after_s)
        try:
            yield
        finally:
            await state.backend.close()

    app = FastAPI(
        title="RYLA diffusion API",
        version="0.1.0",
        summary="Image and video generation on Triton, with the product's REST contract.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(build_router(state))
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=settings.max_body_bytes,
        api_keys=settings.keys,
        protected=lambda path: path in protected,
        metrics=metrics,
        route_label=route_label,
    )
    return app
