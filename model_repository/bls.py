"""Calls from a pipeline model to component models: Triton BLS inside the server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class ComponentCallError(RuntimeError):
    pass


class BlsClient:
    """Runs a component model through Triton's BLS API; host numpy in and out (CPU profile)."""

    def __init__(self) -> None:
        import triton_python_backend_utils as pb_utils  # only importable inside a Triton stub

        self._pb = pb_utils

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        pb = self._pb
        request = pb.InferenceRequest(
            model_name=model,
            inputs=[pb.Tensor(name, np.ascontiguousarray(array)) for name, array in inputs.items()],
            requested_output_names=list(outputs),
        )
        response = request.exec()
        if response.has_error():
            raise ComponentCallError(f"{model}: {response.error().message()}")
        return {name: pb.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}
