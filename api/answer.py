"""A generation's answer, in the product's two forms: the raw bytes with the cost headers, or the JSON document of
api.md (`Accept: application/json`). A job keeps the parts and renders either form when it is read."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response

from registry import Route, task_of

from .job_store import StoredAnswer
from .triton_client import PipelineResult

RESPONSE_HEADERS = {
    "x-cost-usd": "GPU seconds held (the Triton round trip) x the price per second of x-gpu-type, 6 decimals",
    "x-execution-time-sec": "Seconds from the request's arrival to its answer, 3 decimals",
    "x-gpu-type": "The GPU type the price refers to (cpu on the local stack)",
    "x-request-id": "This request's id (also in error messages and logs)",
    "x-seed": "The seed used (drawn at random when the request had none)",
    "x-model": "The checkpoint that served the request",
    "x-cold-start": "true for this process's first generation",
    "x-frames": "A video's frame count (video routes)",
    "server-timing": "Where the time went: queue, triton (round trip), pipeline (inside Triton), encode, api",
}


@dataclass(frozen=True)
class Timings:
    queue_s: float
    triton_s: float
    pipeline_s: float
    encode_s: float
    total_s: float

    def server_timing(self) -> str:
        api_s = max(0.0, self.total_s - self.queue_s - self.triton_s - self.encode_s)
        parts = {
            "queue": self.queue_s,
            "triton": self.triton_s,
            "pipeline": self.pipeline_s,
            "encode": self.encode_s,
            "api": api_s,
            "total": self.total_s,
        }
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in parts.items())


@dataclass(frozen=True)
class Generated:
    """What one generation made, before it is rendered as an answer."""

    route: Route
    result: PipelineResult
    encoded: list[tuple[bytes, str]]  # (bytes, mime type) per image; one clip for video
    seed: int
    cold_start: bool
    timings: Timings
    request_id: str
    fps: int | None  # a video's


def answer_of(generated: Generated, gpu_type: str, price_per_s: float) -> StoredAnswer:
    g, result = generated, generated.result
    cost = result.triton_s * price_per_s
    headers = {
        "x-cost-usd": f"{cost:.6f}",
        "x-execution-time-sec": f"{g.timings.total_s:.3f}",
        "x-gpu-type": gpu_type,
        "x-seed": str(g.seed),
        "x-model": result.model,
        "x-cold-start": "true" if g.cold_start else "false",
        "server-timing": g.timings.server_timing(),
    }
    height, width = (int(d) for d in result.images.shape[-3:-1])
    meta: dict[str, Any] = {"width": width, "height": height}
    video = task_of(g.route).output.kind == "video"
    if video:
        frames = int(result.images.shape[1])
        headers["x-frames"] = str(frames)
        meta |= {"num_frames": frames, "fps": g.fps}
    pixels = {"video" if video else "images": meta}
    document = {
        "request_id": g.request_id,
        "route": g.route.path,
        "model": result.model,
        "seed": g.seed,
        **pixels,
        "timings": {
            "queue_s": round(g.timings.queue_s, 4),
            "inference_s": round(result.triton_s, 4),
            "total_s": round(g.timings.total_s, 4),
        },
        "cold_start": g.cold_start,
        "cost_usd": round(cost, 6),
        "gpu_type": gpu_type,
    }
    return StoredAnswer(tuple(g.encoded), document, headers)


def json_document(answer: StoredAnswer) -> dict[str, Any]:
    """The JSON answer of api.md: the stored document with each item's mime type and base64 data."""
    document = dict(answer.meta)

    def item(data: bytes, mime: str, block: dict[str, Any]) -> dict[str, Any]:
        return {"mime_type": mime, **block, "data": base64.b64encode(data).decode("ascii")}

    if "video" in document:
        data, mime = answer.items[0]
        document["video"] = item(data, mime, document["video"])
    else:
        document["images"] = [item(data, mime, document["images"]) for data, mime in answer.items]
    return document


def response_of(answer: StoredAnswer, as_json: bool) -> Response:
    """The answer as the synchronous route gives it: the first item's bytes, or the JSON document (base64 of every
    item: CPU-bound, run it off the event loop)."""
    if as_json:
        return JSONResponse(json_document(answer), headers=answer.headers)
    data, mime = answer.items[0]
    return Response(content=data, media_type=mime, headers=answer.headers)
