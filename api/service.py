"""The service routes: /health, /ready, /metrics, /v1/models."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from registry import CHECKPOINTS, pipeline_model_of, sharing_model

from .auth import DOCUMENTED_SCHEMES
from .errors import envelope, openapi_responses
from .state import ApiState, Backend, State
from .triton_client import TritonBackend

SERVICE_PATHS = ("/health", "/ready", "/metrics", "/v1/models")


def pipelines_of(state: ApiState) -> list[str]:
    return sorted({pipeline_model_of(r.path) for r in state.routes})


async def _readiness(backend: TritonBackend, models: list[str]) -> dict[str, bool]:
    ready = await asyncio.gather(*(backend.model_ready(m) for m in models))
    return dict(zip(models, ready, strict=True))


def build_service_router(protect_models: bool) -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/health")
    async def health(state: State) -> dict[str, Any]:
        """Alive: 200 while the process serves HTTP, whatever Triton's state."""
        return {
            "status": "healthy",
            "uptime_s": round(time.time() - state.started, 1),
            "groups": list(state.settings.served_groups),
            "routes": [r.path for r in state.routes],
        }

    @router.get("/ready", responses=openapi_responses(503))
    async def ready(state: State, backend: Backend) -> Response:
        """Ready: Triton is ready and every pipeline model of this API's app groups is loaded."""
        models = await _readiness(backend, pipelines_of(state))
        if all(models.values()):
            return JSONResponse({"status": "ready", "models": models})
        missing = ", ".join(m for m, ok in models.items() if not ok)
        return envelope(
            503,
            f"not ready: Triton or its models are not ({missing})",
            headers={"Retry-After": str(state.settings.retry_after_s)},
        )

    @router.get("/metrics", response_class=Response)
    async def metrics(state: State) -> Response:
        """Prometheus text exposition."""
        for name, gate in state.gates.items():
            state.metrics.in_flight.labels(group=name).set(gate.in_flight)
            state.metrics.queued.labels(group=name).set(gate.waiting)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get(
        "/v1/models",
        dependencies=DOCUMENTED_SCHEMES if protect_models else None,
        responses=openapi_responses(401) if protect_models else None,
    )
    async def models(state: State, backend: Backend) -> dict[str, Any]:
        """Each route: its group, checkpoint, the source that serves it and whether it is loaded."""
        pipelines = pipelines_of(state)
        ready = await _readiness(backend, pipelines)
        sources = dict(zip(pipelines, await asyncio.gather(*(backend.sources(p) for p in pipelines)), strict=True))
        rows = []
        for route in state.routes:
            pipeline = pipeline_model_of(route.path)
            ckpt = CHECKPOINTS[route.checkpoint]
            served = sources[pipeline]
            rows.append(
                {
                    "path": route.path,
                    "group": route.group,
                    "checkpoint": ckpt.key,
                    # What the loaded model says it serves; the registry's pinned source when it cannot say.
                    "model": served.get(ckpt.key) or f"hub:{ckpt.hub_id}@{ckpt.revision}",
                    "triton_model": pipeline,
                    # Routes that are presets of one model: the same checkpoint behind the same pipeline model.
                    "shares_model_with": sharing_model(route.path),
                    # A loaded pipeline that names its checkpoints must name this one to serve it.
                    "loaded": ready[pipeline] and (not served or ckpt.key in served),
                }
            )
        return {"object": "list", "data": rows}

    return router
