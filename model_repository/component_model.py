"""Triton python-backend model that runs one exported component (ONNX) with ONNX Runtime on the CPU.

Inputs and outputs are read from the model's config.pbtxt, which layout.py generated from the registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # Several component processes share the machine's cores; let each use them all but never oversubscribe
        # with inter-op threads (the graphs are sequential).
        options.intra_op_num_threads = int(os.environ.get("RYLA_ORT_THREADS", "0"))
        options.inter_op_num_threads = 1
        # No arena: it keeps every request's peak (a 12k-token edit's attention is GBs) for the life of the process,
        # and a dozen component processes share the machine's memory.
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.model_name = args["model_name"]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                feeds: dict[str, np.ndarray] = {}
                for name in self.input_names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        feeds[name] = tensor.as_numpy()
                outputs = self.session.run(self.output_names, feeds)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(n, np.ascontiguousarray(o))
                            for n, o in zip(self.output_names, outputs, strict=True)
                        ]
                    )
                )
            except Exception as exc:  # one bad request must not take the others down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses
