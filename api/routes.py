"""The routes: one POST per generating route of the registry, and the service routes.

No `from __future__ import annotations` here: FastAPI reads each endpoint's body type from its real annotation,
which is a model class built per route at start-up.
"""

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from registry import CHECKPOINTS, GROUPS, ROUTES, Route, family_of, pipeline_model_of, routes_of

from .backend import Backend
from .encoding import encode_image
from .errors import ApiError, envelope
from .gate import GroupGate
from .metrics import Metrics
from .schemas import MAX_SEED, request_model
from .settings import Settings


@dataclass
class ApiState:
    settings: Settings
    metrics: Metrics
    gates: dict[str, GroupGate]
    backend: Backend | None = None  # set by the app's lifespan
    first_generation_done: bool = False
    started: float = field(default_factory=lambda: psutil.Process().create_time())


def served_routes(settings: Settings) -> list[Route]:
    return [r for g in settings.served_groups for r in routes_of(g)]


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _inputs(route: Route, body: BaseModel, seed: int) -> dict[str, Any]:
    return {
        "CHECKPOINT": route.checkpoint,
        "PROMPT": body.prompt,
        "NEGATIVE_PROMPT": body.negative_prompt or "",
        "WIDTH": body.width,
        "HEIGHT": body.height,
        "STEPS": body.steps,
        "CFG": body.cfg,
        "SEED": seed,
        "NUM_IMAGES": body.num_images,
    }


def generation_endpoint(route: Route, state: ApiState):  # noqa: ANN201 - FastAPI reads the signature
    model_cls = request_model(route)
    task = family_of(route.checkpoint).task
    pipeline = pipeline_model_of(route.path)

    async def generate(request: Request, body: model_cls) -> Response:  # type: ignore[valid-type]
        arrival = request.state.arrival
        if body.num_images > 1 and not _wants_json(request):
            raise ApiError(422, "num_images > 1 needs `Accept: application/json`", field="num_images")
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        cold_start = not state.first_generation_done
        state.first_generation_done = True
        gate = state.gates[route.group]
        async with gate.slot() as queue_s:
            result = await state.backend.run(pipeline, task, _inputs(route, body, seed), route.timeout_s)
        state.metrics.triton_seconds.labels(route=route.path).observe(result.triton_s)
        encoded = [encode_image(px, body.output_format, body.output_quality) for px in result.images]
        cost = result.triton_s * state.settings.price
        total_s = time.perf_counter() - arrival
        if cold_start:
            state.metrics.cold_start.set(time.time() - state.started)
        state.metrics.latency.labels(route=route.path).observe(total_s)
        api_s = total_s - queue_s - result.triton_s
        headers = {
            "x-cost-usd": f"{cost:.6f}",
            "x-execution-time-sec": f"{total_s:.3f}",
            "x-gpu-type": state.settings.gpu_type,
            "x-seed": str(seed),
            "x-model": result.model,
            "x-cold-start": "true" if cold_start else "false",
            # Where the time went: queue, Triton (network + server), the pipeline model inside it, and the API.
            "server-timing": ", ".join(
                f"{name};dur={seconds * 1000:.1f}"
                for name, seconds in (
                    ("queue", queue_s),
                    ("triton", result.triton_s),
                    ("pipeline", result.pipeline_s),
                    ("api", api_s),
                )
            ),
        }
        if not _wants_json(request):
            data, mime = encoded[0]
            return Response(content=data, media_type=mime, headers=headers)
        height, width = result.images.shape[1:3]
        return JSONResponse(
            {
                "request_id": request.state.request_id,
                "route": route.path,
                "model": result.model,
                "seed": seed,
                "images": [
                    {"mime_type": mime, "width": width, "height": height, "data": base64.b64encode(data).decode()}
                    for data, mime in encoded
                ],
                "timings": {
                    "queue_s": round(queue_s, 4),
                    "inference_s": round(result.triton_s, 4),
                    "total_s": round(total_s, 4),
                },
                "cold_start": cold_start,
                "cost_usd": round(cost, 6),
                "gpu_type": state.settings.gpu_type,
            },
            headers=headers,
        )

    generate.__name__ = "generate_" + route.path.strip("/").replace("-", "_").replace(".", "_")
    return generate


def build_router(state: ApiState) -> APIRouter:
    router = APIRouter()
    for route in served_routes(state.settings):
        router.add_api_route(
            route.path,
            generation_endpoint(route, state),
            methods=["POST"],
            summary=route.summary,
            tags=[route.group],
            response_class=Response,
            responses={
                200: {
                    "description": "The image (raw bytes), or JSON with `Accept: application/json`",
                    "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "application/json": {}},
                }
            },
        )

    pipelines = sorted({family_of(r.checkpoint).triton_pipeline for r in served_routes(state.settings)})

    @router.get("/health", tags=["service"])
    async def health() -> dict:
        return {
            "status": "healthy",
            "uptime_s": round(time.time() - state.started, 1),
            "groups": list(state.settings.served_groups),
        }

    @router.get("/ready", tags=["service"])
    async def ready() -> Response:
        models = {m: await state.backend.model_ready(m) for m in pipelines}
        if all(models.values()):
            return JSONResponse({"status": "ready", "models": models})
        missing = ", ".join(m for m, ok in models.items() if not ok)
        return envelope(503, f"not ready: {missing}", headers={"Retry-After": str(state.settings.retry_after_s)})

    @router.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        for name, gate in state.gates.items():
            state.metrics.in_flight.labels(group=name).set(gate.in_flight)
            state.metrics.queued.labels(group=name).set(gate.waiting)
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/models", tags=["service"])
    async def models() -> dict:
        rows = []
        for pipeline in pipelines:
            loaded = await state.backend.model_ready(pipeline)
            sources = await state.backend.sources(pipeline) if loaded else {}
            for route in served_routes(state.settings):
                if family_of(route.checkpoint).triton_pipeline != pipeline:
                    continue
                ckpt = CHECKPOINTS[route.checkpoint]
                rows.append(
                    {
                        "route": route.path,
                        "group": route.group,
                        "checkpoint": ckpt.key,
                        "model": sources.get(ckpt.key, f"hub:{ckpt.hub_id}@{ckpt.revision}"),
                        "triton_model": pipeline,
                        "loaded": loaded,
                    }
                )
        return {"object": "list", "data": sorted(rows, key=lambda r: r["route"])}

    return router


def make_gates(settings: Settings) -> dict[str, GroupGate]:
    return {
        name: GroupGate(name, GROUPS[name].max_concurrency, GROUPS[name].max_queue, settings.retry_after_s)
        for name in settings.served_groups
    }


def route_label(path: str) -> str:
    return path if path in ROUTES or path in {"/health", "/ready", "/metrics", "/v1/models"} else "other"
