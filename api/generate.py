"""The generating routes: one POST endpoint per registry route, its request model and defaults from the registry.

No `from __future__ import annotations` here: FastAPI reads each endpoint's body type from its real annotation,
which is a model class built per route at start-up.
"""

import os
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from registry import Kind, Route, UnsupportedRoute, pipeline_model_of, task_of
from registry.tasks import MAX_SEED, frames_for_key_frames, key_frames_per_video

from .answer import RESPONSE_HEADERS, Generated, Timings, answer_of, response_of
from .cancellation import unless_client_leaves
from .encoding import IMAGE_FORMATS, encode_image
from .errors import ApiError, openapi_responses
from .job_store import StoredAnswer
from .jobs import job_urls
from .loras import LoraSources, with_trigger_word
from .media import MediaLimits, check_same_size, decode_image_array
from .schemas import GenerationAnswer, JobAccepted, RequestBody, request_model
from .state import ApiState, Backend, State
from .triton_client import PipelineResult, Progress, TritonBackend
from .video_decoding import VideoLimits, decode_video, sample_key_frames
from .video_encoding import MIME_TYPES as VIDEO_MIMES
from .video_encoding import encode_video


def wants_json(request: Request) -> bool:
    media_types = (part.split(";")[0].strip().lower() for part in request.headers.get("accept", "").split(","))
    return "application/json" in media_types


def decode_media(route: Route, body: RequestBody) -> dict[str, Any]:
    """The request's media fields, checked and decoded (CPU-bound: run off the event loop), by field name: an array
    per image (H x W x 3; masks H x W), a tuple of them for a list field. A mask must have the size of the image
    its field names (`same_size_as`)."""
    limits = MediaLimits(route.limits.max_media_bytes, route.limits.max_media_pixels)
    media: dict[str, Any] = {}
    for f in body.task.media:
        value = getattr(body, f.name, None)
        if value is None:
            continue
        if f.kind is Kind.VIDEO:
            num_frames = body.task.resolved(route, dict(body))["num_frames"]  # sent as num_frames or length
            media[f.name] = decode_key_frames(route, f.name, value, num_frames)
            continue
        mode = "L" if f.kind is Kind.MASK else "RGB"
        if f.items is None:
            media[f.name] = decode_image_array(value, f.name, limits, mode=mode)
        else:
            media[f.name] = tuple(
                decode_image_array(v, f"{f.name}[{i}]", limits, mode=mode) for i, v in enumerate(value)
            )
        if f.same_size_as and f.same_size_as in media:
            check_same_size(media[f.same_size_as], media[f.name], f.name, f.same_size_as)
    return media


def decode_key_frames(route: Route, name: str, value: str | list[str], num_frames: int) -> Any:
    """A video field's key frames (K x H x W x 3), a tuple of them for a list field: the first, middle and last
    frames of one clip (first and last of a clip of 5 frames), the first of each of several (registry/tasks.py:
    key_frames_per_video)."""
    videos = [value] if isinstance(value, str) else value
    per = key_frames_per_video(len(videos), num_frames)
    if per == 0:
        least = frames_for_key_frames(len(videos))
        raise ApiError(422, f"{name}: {len(videos)} reference videos need num_frames of at least {least}", name)
    lim = route.limits
    limits = VideoLimits(lim.max_video_bytes, lim.max_video_frames, lim.max_video_pixels, lim.max_video_seconds)
    if isinstance(value, str):
        return sample_key_frames(decode_video(value, name, limits), per)
    return tuple(sample_key_frames(decode_video(v, f"{name}[{i}]", limits), per) for i, v in enumerate(value))


@dataclass(frozen=True)
class Prepared:
    """What a request brings before it queues: its media decoded, its LoRA set resolved to local files."""

    media: dict[str, Any]
    loras: str | None  # the LoraSet as the LORAS tensor's text; None: the base model


def prepare(route: Route, body: RequestBody, loras: LoraSources) -> Prepared:
    """Blocking (Pillow, file checks, LoRA fetches): run off the event loop."""
    media = decode_media(route, body)
    lora_set = loras.resolve(route, body.values())
    return Prepared(media, None if lora_set is None else lora_set.encode().decode())


def pipeline_inputs(route: Route, body: RequestBody, seed: int, prepared: Prepared) -> dict[str, Any]:
    """The pipeline model's inputs of this request, by tensor name (its task's TaskSpec.inputs)."""
    values = with_trigger_word({**body.values(), "seed": seed, **prepared.media}, body.task.prompt.name)
    return body.task.tensor_values(route, values, loras=prepared.loras)


# Several images of one answer are encoded at once: the encoders release the GIL (perf/results/cpu/encode.md).
_ENCODERS = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="encode")


def _encode_all(result: PipelineResult, body: RequestBody) -> list[tuple[bytes, str]]:
    video = body.task.output.kind == "video"  # N x F x H x W x 3: one clip per item

    def encode(item: np.ndarray) -> tuple[bytes, str]:
        if video:
            return encode_video(item, body.output_format, body.output_quality, body.fps)
        return encode_image(item, body.output_format, body.output_quality)

    if len(result.images) == 1:
        return [encode(result.images[0])]
    return list(_ENCODERS.map(encode, result.images))


def prefers_async(request: Request) -> bool:
    """RFC 7240's `Prefer: respond-async`: answer 202 with a job at once."""
    prefs = (p.split(";")[0].strip().lower() for h in request.headers.getlist("prefer") for p in h.split(","))
    return "respond-async" in prefs


@dataclass(frozen=True)
class Generation:
    """One validated request, its media decoded and its LoRAs found: ready to queue, now or as a job."""

    route: Route
    body: RequestBody
    seed: int
    prepared: Prepared
    request_id: str
    arrival: float

    async def run(
        self,
        state: ApiState,
        backend: TritonBackend,
        progress: Progress | None = None,
        started: Callable[[], None] | None = None,
        deadline_s: float | None = None,
    ) -> Generated:
        """The generation, bounded by the route's limit and, given `deadline_s`, done that many seconds after the
        request's arrival (RYLA_ANSWER_DEADLINE_S, for synchronous answers: a job's answer is read later)."""
        route, body = self.route, self.body
        timeout_s = state.settings.timeout_of(route.timeout_s)
        left_s = None if deadline_s is None else deadline_s - (time.perf_counter() - self.arrival)
        async with state.gates[route.group].slot(max_wait_s=left_s) as queue_s:
            if started is not None:
                started()
            limit_s = timeout_s
            if deadline_s is not None:
                limit_s = min(timeout_s, deadline_s - (time.perf_counter() - self.arrival))
                if limit_s <= 0:
                    raise ApiError(504, "the answer deadline passed before the generation could start")
            inputs = pipeline_inputs(route, body, self.seed, self.prepared)
            pipeline = pipeline_model_of(route.path)
            result = await backend.infer(pipeline, body.task, inputs, limit_s, self.request_id, progress)
        cold_start = state.claim_cold_start()
        t_encode = time.perf_counter()
        # Pillow holds the CPU for tens of milliseconds per image: off the event loop, so other requests move on.
        encoded = await run_in_threadpool(_encode_all, result, body)
        encode_s = time.perf_counter() - t_encode
        timings = Timings(queue_s, result.triton_s, result.pipeline_s, encode_s, time.perf_counter() - self.arrival)
        for stage in ("queue", "triton", "pipeline", "encode"):
            state.metrics.stage.labels(route=route.path, stage=stage).observe(getattr(timings, f"{stage}_s"))
        if cold_start:
            state.metrics.cold_start.set(time.time() - state.started)
        fps = getattr(body, "fps", None)
        return Generated(route, result, encoded, self.seed, cold_start, timings, self.request_id, fps)


def generation_endpoint(route: Route) -> Callable[..., Awaitable[Response]]:
    model_cls = request_model(route)

    async def generate(request: Request, body: model_cls, state: State, backend: Backend) -> Response:  # type: ignore[valid-type]
        as_json = wants_json(request)
        if getattr(body, "num_images", 1) > 1 and not as_json:
            raise ApiError(422, "num_images > 1 needs `Accept: application/json`", field="num_images")
        # secrets, not random: a seed nobody can predict from earlier answers.
        seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        # Bad media or LoRAs are a 422/413/404 before the request takes a place in the queue, found off the loop.
        prepared = await run_in_threadpool(prepare, route, body, state.loras)
        generation = Generation(route, body, seed, prepared, request.state.request_id, request.state.arrival)
        settings = state.settings

        async def answer(
            progress: Progress | None = None,
            started: Callable[[], None] | None = None,
            deadline_s: float | None = None,
        ) -> StoredAnswer:
            generated = await generation.run(state, backend, progress, started, deadline_s)
            return answer_of(generated, settings.gpu_type, settings.price)

        if prefers_async(request):
            state.gates[route.group].check_room()
            owner = state.keys.owner(dict(request.headers.raw))
            job = await state.jobs.submit(route.path, owner, as_json, answer)
            urls = job_urls(job.id)
            headers = {"Location": urls["status_url"], "Preference-Applied": "respond-async"}
            return JSONResponse({"id": job.id, **urls}, status_code=202, headers=headers)
        # A client that leaves gives up its place in the queue, or its generation within one step.
        stored = await unless_client_leaves(request.receive, answer(deadline_s=settings.answer_deadline_s))
        return await run_in_threadpool(response_of, stored, as_json)

    generate.__name__ = "generate_" + route.path.strip("/").replace("-", "_").replace(".", "_")
    generate.__doc__ = (
        f"{route.summary}. Defaults: {route.width}x{route.height}, {route.steps} steps, cfg {route.cfg}; "
        f"limit {route.timeout_s:.0f} s. Answers the image bytes, or JSON with `Accept: application/json`; "
        "with `Prefer: respond-async`, 202 and a job to follow at /v1/jobs/{id}."
    )
    return generate


def openapi_of(route: Route) -> dict[str, Any]:
    """add_api_route keywords that document a generating route: its answers, headers and errors."""
    video = task_of(route).output.kind == "video"
    mimes = sorted(set(VIDEO_MIMES.values()) if video else {mime for _, mime in IMAGE_FORMATS.values()})
    return {
        "summary": route.summary,
        "tags": [route.group],
        "response_class": Response,
        "responses": {
            200: {
                "description": "The image bytes (content-type tells the format), or JSON with Accept: application/json",
                "model": GenerationAnswer,
                "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in mimes},
                "headers": {
                    name: {"description": text, "schema": {"type": "string"}} for name, text in RESPONSE_HEADERS.items()
                },
            },
            202: {"description": "With `Prefer: respond-async`: the job that runs the request", "model": JobAccepted},
            **openapi_responses(400, 401, *((404,) if route.lora else ()), 408, 413, 422, 429, 500, 503, 504),
        },
    }


def unsupported_endpoint(route: UnsupportedRoute) -> Callable[[], Awaitable[Response]]:
    """A route the product calls that this stack refuses: 501 for any body, which is never read."""

    async def endpoint() -> Response:
        raise ApiError(501, route.message)

    return endpoint


def openapi_of_unsupported(route: UnsupportedRoute) -> dict[str, Any]:
    return {
        "summary": route.summary,
        "description": route.message,
        "tags": [route.group],
        "responses": {501: {**openapi_responses(501)[501], "description": route.message}, **openapi_responses(401)},
    }
