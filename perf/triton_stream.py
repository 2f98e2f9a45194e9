"""One request to a (decoupled) pipeline model over Triton's gRPC stream, for the GPU benchmark: the progress
responses are read past, the answer's tensors come back as numpy. Needs tritonclient[grpc] (carried as a wheel to
the GPU machine)."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np

from registry.tasks import PROGRESS

_NP = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64}


def infer(url: str, model: str, inputs: dict[str, tuple[str, Any]], timeout_s: float = 900) -> dict[str, np.ndarray]:
    """inputs: name -> (Triton dtype, scalar, bytes for a UTF-8 text in a UINT8 tensor, or None to leave it out).
    Returns the answer's tensors by name."""
    import tritonclient.grpc as grpcclient

    tensors = []
    for name, (dtype, value) in inputs.items():
        if value is None:  # an optional input left out
            continue
        data = np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else np.array([value], dtype=_NP[dtype])
        tensor = grpcclient.InferInput(name, list(data.shape), dtype)
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)), stream_timeout=timeout_s)
    ended = False  # the model's last response is in: its answer, or its error
    try:
        client.async_stream_infer(model, tensors)
        while True:
            result, error = responses.get(timeout=timeout_s)
            if error is not None:
                ended = True
                raise RuntimeError(f"{model}: {error}")
            names = [o.name for o in result.get_response().outputs]
            if PROGRESS.name not in names:
                ended = True
                return {n: result.as_numpy(n) for n in names}
    finally:
        # Cancel only a stream left early: a cancel racing the end of a stream whose last response is in can keep
        # Triton from ever unloading the model (api/triton_client.py _close).
        client.stop_stream(cancel_requests=not ended)
        client.close()
