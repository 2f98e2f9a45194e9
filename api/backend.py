"""Talking to Triton: one async gRPC client, request tensors from the registry's pipeline contract, and the mapping
of Triton's failures onto the API's errors."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from registry import PIPELINE_INPUTS, PIPELINE_OUTPUTS, SOURCE_PARAMETER_PREFIX, Task, parse_invalid_request

from .errors import ApiError

_NUMPY = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}
# Reconnect quickly after Triton restarts: gRPC's default backoff grows to two minutes.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_UNAVAILABLE = ("UNAVAILABLE", "unknown model", "is not found", "not ready", "failed to connect", "Socket closed")


@dataclass(frozen=True)
class PipelineResult:
    images: np.ndarray  # N x H x W x 3 uint8
    model: str
    pipeline_s: float
    triton_s: float


class Backend:
    def __init__(self, url: str, retry_after_s: int) -> None:
        self.url = url
        self.retry_after_s = retry_after_s
        self.client = InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    async def close(self) -> None:
        await self.client.close()

    def _unavailable(self, detail: str) -> ApiError:
        return ApiError(
            503,
            f"the model backend is unavailable ({detail}); retry later",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    def _map(self, exc: InferenceServerException) -> ApiError:
        text = f"{exc.status() or ''} {exc.message() or ''}"
        invalid = parse_invalid_request(text)
        if invalid:
            return ApiError(422, invalid[1], field=invalid[0])
        if "DEADLINE_EXCEEDED" in text:
            return ApiError(504, "the generation ran past the route's time limit")
        if any(marker in text for marker in _UNAVAILABLE):
            reachable = "connect" not in text and "Socket closed" not in text
            return self._unavailable("the model is not loaded" if reachable else "Triton is not reachable")
        return ApiError(500, f"the model failed: {exc.message()}")

    async def run(self, model: str, task: Task, values: dict[str, Any], timeout_s: float) -> PipelineResult:
        inputs = []
        for spec in PIPELINE_INPUTS[task]:
            tensor = InferInput(spec.name, list(spec.dims), spec.dtype)
            value = values[spec.name]
            tensor.set_data_from_numpy(
                np.array([value.encode() if isinstance(value, str) else value], dtype=_NUMPY[spec.dtype])
            )
            inputs.append(tensor)
        outputs = [InferRequestedOutput(s.name) for s in PIPELINE_OUTPUTS]
        t0 = time.perf_counter()
        try:
            # client_timeout cancels the call on the server's side of the channel too.
            result = await asyncio.wait_for(
                self.client.infer(model, inputs, outputs=outputs, client_timeout=timeout_s), timeout_s + 1
            )
        except InferenceServerException as exc:
            raise self._map(exc) from None
        except TimeoutError:
            raise ApiError(504, "the generation ran past the route's time limit") from None
        triton_s = time.perf_counter() - t0
        return PipelineResult(
            images=result.as_numpy("IMAGES"),
            model=result.as_numpy("MODEL").reshape(-1)[0].decode(),
            pipeline_s=float(result.as_numpy("PIPELINE_S").reshape(-1)[0]),
            triton_s=triton_s,
        )

    async def model_ready(self, model: str) -> bool:
        try:
            return bool(await self.client.is_server_ready()) and bool(await self.client.is_model_ready(model))
        except InferenceServerException:
            return False

    async def sources(self, model: str) -> dict[str, str]:
        """checkpoint key -> label of what the loaded pipeline model serves, from its config parameters."""
        try:
            config = await self.client.get_model_config(model, as_json=True)
        except InferenceServerException:
            return {}
        params = config.get("config", {}).get("parameters", {})
        return {
            key[len(SOURCE_PARAMETER_PREFIX) :]: value.get("string_value", "")
            for key, value in params.items()
            if key.startswith(SOURCE_PARAMETER_PREFIX)
        }
