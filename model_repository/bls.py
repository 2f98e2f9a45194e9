"""Calls from a pipeline model to component models: Triton BLS inside the server.

Proxies hand torch tensors in and get torch tensors back. On the CPU profile they cross as numpy; on the GPU
profile as DLPack, so a latent never leaves the GPU between steps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from registry import parse_invalid_request


class ComponentCallError(RuntimeError):
    pass


class ComponentRefused(ComponentCallError):
    """A component model refused the client's input (a LoRA that does not fit it): INVALID_ARG with the field, which
    the pipeline model passes on (registry/contract.py)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RequestCancelled(RuntimeError):
    """The request was cancelled (its client went away, or its deadline passed): the pipeline stops before its
    next component call, so the model is free within one denoising step."""


def _never() -> bool:
    return False


class BlsClient:
    def __init__(self, gpu: bool = False, profile: bool = False) -> None:
        import triton_python_backend_utils as pb_utils  # only importable inside a Triton stub

        self._pb = pb_utils
        self.gpu = gpu
        # RYLA_PROFILE_BLS=1: seconds per component model (calls, total), to find where served time goes.
        self.profile = profile
        self.timings: dict[str, list[float]] = {}
        self._cancelled: Callable[[], bool] = _never

    @contextlib.contextmanager
    def serving(self, cancelled: Callable[[], bool]) -> Iterator[None]:
        """Component calls made inside first ask `cancelled` (the Triton request's is_cancelled)."""
        self._cancelled = cancelled
        try:
            yield
        finally:
            self._cancelled = _never

    def _tensor(self, name: str, value: torch.Tensor) -> object:
        if self.gpu:
            return self._pb.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(value.contiguous()))
        return self._pb.Tensor(name, np.ascontiguousarray(value.detach().cpu().numpy()))

    def _torch(self, tensor: object) -> torch.Tensor:
        if self.gpu:
            return torch.utils.dlpack.from_dlpack(tensor.to_dlpack())
        return torch.from_numpy(tensor.as_numpy().copy())

    def infer(self, model: str, inputs: Mapping[str, torch.Tensor], outputs: Sequence[str]) -> dict[str, torch.Tensor]:
        if self._cancelled():
            raise RequestCancelled(f"cancelled before calling {model}")
        pb = self._pb
        request = pb.InferenceRequest(
            model_name=model,
            inputs=[self._tensor(name, value) for name, value in inputs.items()],
            requested_output_names=list(outputs),
            # Ask for outputs where the caller computes: GPU memory on the GPU profile.
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_GPU if self.gpu else pb.TRITONSERVER_MEMORY_CPU),
        )
        t0 = time.perf_counter() if self.profile else 0.0
        response = request.exec()
        if response.has_error():
            message = response.error().message()
            refused = parse_invalid_request(message)
            if refused is not None:
                raise ComponentRefused(*refused)
            raise ComponentCallError(f"{model}: {message}")
        result = {name: self._torch(pb.get_output_tensor_by_name(response, name)) for name in outputs}
        if self.profile:
            if self.gpu:
                torch.cuda.synchronize()
            entry = self.timings.setdefault(model, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t0
        return result

    def take_timings(self) -> str:
        """A one-line summary of the calls since the last one, then reset."""
        text = ", ".join(f"{m}: {n} calls {t * 1000:.0f} ms" for m, (n, t) in self.timings.items())
        self.timings = {}
        return text
