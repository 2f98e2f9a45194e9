"""Talking to Triton: one async gRPC client, request tensors from the task's declaration (registry/tasks.py), and
the mapping of Triton's failures onto the API's errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from registry import SOURCE_PARAMETER_PREFIX, TaskSpec, parse_invalid_request
from registry.tasks import MODEL, PIPELINE_S, PROGRESS

from .errors import ApiError

log = logging.getLogger("api.triton")

_NUMPY = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "UINT8": np.uint8}
_CHANNEL_ARGS = [
    # Images of 4 x 2048² x 3 bytes exceed gRPC's 4 MiB default.
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect within a second after Triton restarts; gRPC's default backoff grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# gRPC statuses that mean "no model to answer right now": Triton down or restarting (UNAVAILABLE), the model not
# loaded or still loading (NOT_FOUND: "unknown model ... has no available versions"), the server cancelling in-flight
# work while it shuts down (CANCELLED).
_UNAVAILABLE_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND", "StatusCode.CANCELLED"}
_QUEUE_FULL = "Exceeds maximum queue size"
_UNAVAILABLE_TEXT = ("is not found", "no available versions", "is not ready", "failed to connect")
Progress = Callable[[int, int], None]  # (step, steps) after each denoising step


@dataclass(frozen=True)
class PipelineResult:
    images: np.ndarray  # N x H x W x 3 uint8; a video's N x F x H x W x 3
    model: str  # the checkpoint label that served it
    pipeline_s: float  # inside the pipeline model
    triton_s: float  # the whole round trip: network, Triton's queue, the pipeline


def unavailable(retry_after_s: int, detail: str) -> ApiError:
    return ApiError(503, f"the model backend is unavailable ({detail}); retry later", headers=_retry(retry_after_s))


def _retry(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def map_triton_error(exc: InferenceServerException, retry_after_s: int, request_id: str = "") -> ApiError:
    """Triton's failure as the API's error. 500s carry no Triton text: it can hold a model's stack trace."""
    status, message = str(exc.status() or ""), str(exc.message() or "")
    # A pipeline model's rejection of the client's input: the contract's message naming the field
    # (registry/contract.py). A stream's error carries its message only, no code, so the message's shape is the mark;
    # Triton's own INVALID_ARG errors, about the tensors this API sent, have another text: a 500 below.
    invalid = parse_invalid_request(message)
    if invalid:
        field, why = invalid
        return ApiError(422, f"{field}: {why}", field=field)
    if _QUEUE_FULL in message:  # a Triton queue policy, were one configured (the API's gate bounds admission)
        return ApiError(429, "the model's queue is full; retry later", headers=_retry(retry_after_s))
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return ApiError(504, "the generation ran past the route's time limit and was cancelled")
    if status in _UNAVAILABLE_STATUSES or any(marker in message for marker in _UNAVAILABLE_TEXT):
        reachable = status != "StatusCode.UNAVAILABLE"
        return unavailable(retry_after_s, "the model is not loaded" if reachable else "Triton is not reachable")
    log.error("request %s: Triton failed: %s %s", request_id or "-", status, message)
    return ApiError(500, "the model failed")


# How long an answered stream may take to end on Triton's side before it is cancelled.
STREAM_CLOSE_S = 2.0


async def _close(responses: Any) -> None:
    """Let a stream whose last response is in (an answer or an error) end on Triton's side: a cancel of such a
    stream races its end, and Triton 2.51 then at times keeps the model's instance referenced, so the model can never
    unload (a stop waits for it until the exit timeout)."""
    try:
        async with asyncio.timeout(STREAM_CLOSE_S):
            async for _ in responses:
                pass
    except Exception:  # the answer is in: a stream that fails to end (Triton gone, a stall) is only cancelled
        responses.cancel()


class TritonBackend:
    """One async client per app, owned by the lifespan; its channel reconnects by itself after Triton restarts."""

    def __init__(self, url: str, retry_after_s: int, probe_timeout_s: float) -> None:
        self.url = url
        self.retry_after_s = retry_after_s
        self.probe_timeout_s = probe_timeout_s
        self.client = InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        self._closing: set[asyncio.Task] = set()  # answered streams ending (held: the loop keeps weak references)

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.client.close()

    async def infer(
        self,
        model: str,
        task: TaskSpec,
        values: dict[str, Any],
        timeout_s: float,
        request_id: str = "",
        progress: Progress | None = None,
    ) -> PipelineResult:
        specs = task.inputs
        if set(values) != {s.name for s in specs}:  # a programming error, not the client's: a 500
            raise ValueError(f"inputs {sorted(values)} do not match the registry's {[s.name for s in specs]}")
        inputs = []
        for spec in specs:
            value = values[spec.name]
            if value is None and spec.optional:
                continue
            if isinstance(value, str):  # text travels as UTF-8 bytes in a UINT8 tensor (registry/tasks.py)
                data = np.frombuffer(value.encode(), dtype=np.uint8)
            elif isinstance(value, np.ndarray):  # decoded media, already in the registry's layout
                data = np.ascontiguousarray(value, dtype=_NUMPY[spec.dtype])
            else:
                data = np.array([value], dtype=_NUMPY[spec.dtype]).reshape(spec.dims)
            tensor = InferInput(spec.name, list(data.shape), spec.dtype)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        outputs = [InferRequestedOutput(s.name) for s in task.output.stream_tensors]
        request = {"model_name": model, "inputs": inputs, "outputs": outputs, "request_id": request_id}
        t0 = time.perf_counter()
        try:
            # stream_timeout is the gRPC deadline of the stream: past it Triton sees the request cancelled and the
            # model stops within a step. asyncio.timeout is the backstop should the deadline never fire; leaving the
            # stream early (a cancelled task) cancels the RPC too.
            async with asyncio.timeout(timeout_s + 1.0):
                result = await self._stream(request, timeout_s, progress)
        except InferenceServerException as exc:
            raise map_triton_error(exc, self.retry_after_s, request_id) from None
        except TimeoutError:
            raise ApiError(504, "the generation ran past the route's time limit and was cancelled") from None
        triton_s = time.perf_counter() - t0
        pixels = task.output.pixels
        images = result.as_numpy(pixels.name)
        if images is None or images.dtype != np.uint8 or images.ndim != len(pixels.dims) or images.shape[-1] != 3:
            shape = None if images is None else (images.dtype, images.shape)
            log.error("request %s: model %s answered %s %r", request_id or "-", model, pixels.name, shape)
            raise ApiError(500, f"the model answered malformed {task.output.kind}")
        return PipelineResult(
            images=images,
            model=result.as_numpy(MODEL.name).tobytes().decode(),
            pipeline_s=float(result.as_numpy(PIPELINE_S.name).reshape(-1)[0]),
            triton_s=triton_s,
        )

    async def _stream(self, request: dict[str, Any], timeout_s: float, progress: Progress | None) -> InferResult:
        """One request over a gRPC stream (pipeline models are decoupled): PROGRESS responses go to `progress`, the
        first response without PROGRESS is the answer."""
        answered = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request
            await answered.wait()  # the stream stays open until the answer is in

        responses = self.client.stream_infer(requests(), stream_timeout=timeout_s)
        ended = False  # the model's last response is in: its answer, or its error
        try:
            while True:
                try:
                    result, error = await anext(responses)
                except grpc.aio.AioRpcError as exc:  # the stream itself failed: deadline, Triton gone
                    raise InferenceServerException(exc.details(), status=str(exc.code())) from None
                except StopAsyncIteration:
                    raise InferenceServerException("the stream ended without an answer") from None
                if error is not None:
                    ended = True
                    raise error
                step = result.as_numpy(PROGRESS.name)
                if step is None:
                    ended = True
                    return result
                if progress is not None:
                    progress(int(step[0]), int(step[1]))
        finally:
            answered.set()  # the request side ends: Triton closes the stream once its responses are out
            if ended:
                # Off the answer's path: the caller has what it needs; the stream's end is Triton's bookkeeping.
                closing = asyncio.create_task(_close(responses))
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            else:
                responses.cancel()  # left early (the caller gone, the deadline): Triton cancels the request

    async def model_ready(self, model: str) -> bool:
        """Triton up and ready, and this model loaded and ready; False on any failure, never a hang."""
        try:
            return bool(await self.client.is_server_ready(client_timeout=self.probe_timeout_s)) and bool(
                await self.client.is_model_ready(model, client_timeout=self.probe_timeout_s)
            )
        except InferenceServerException:
            return False

    async def sources(self, model: str) -> dict[str, str]:
        """checkpoint key -> the source label the loaded pipeline model names in its config parameters."""
        try:
            config = await self.client.get_model_config(model, as_json=True, client_timeout=self.probe_timeout_s)
        except InferenceServerException:
            return {}
        params = config.get("config", {}).get("parameters", {})
        return {
            key.removeprefix(SOURCE_PARAMETER_PREFIX): value.get("string_value", "")
            for key, value in params.items()
            if key.startswith(SOURCE_PARAMETER_PREFIX)
        }
