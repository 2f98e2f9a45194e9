"""Triton python-backend model that runs one exported component (ONNX) with ONNX Runtime on the CPU.

Inputs and outputs are read from the model's config.pbtxt, which layout.py generated from the registry. A component
that takes per-request LoRAs (registry Component.lora) gets the optional LORAS input and runs each request on the
session of its LoRA set (onnx_loras.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from components.lora_set import LoraMismatch, LoraSet
from registry import component_of, invalid_request_message
from registry.tasks import LORAS

if TYPE_CHECKING:
    from .onnx_loras import OnnxLoras


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_names = [t["name"] for t in config["input"] if t["name"] != LORAS.name]
        self.output_names = [t["name"] for t in config["output"]]
        self.path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.model_name = args["model_name"]
        family, component = component_of(self.model_name)
        self.loras: OnnxLoras | None = None
        if component.lora:
            from .onnx_loras import OnnxLoras  # torch, for merging: only the components that take LoRAs load it

            module_dir = Path(params["checkpoint_dir"]) / component.subfolder
            self.loras = OnnxLoras(self.path, module_dir, family.pipeline_class, self._session)
            self.session = self.loras.base
        else:
            self.session = self._session(str(self.path))

    def _session(self, model: str | bytes) -> ort.InferenceSession:
        """A session of the exported model (its path), or of a LoRA set's merged model (its bytes)."""
        options = ort.SessionOptions()
        # Several component processes share the machine's cores; let each use them all but never oversubscribe
        # with inter-op threads (the graphs are sequential).
        options.intra_op_num_threads = int(os.environ.get("RYLA_ORT_THREADS", "0"))
        options.inter_op_num_threads = 1
        # No arena: it keeps every request's peak (a 12k-token edit's attention is GBs) for the life of the process,
        # and a dozen component processes share the machine's memory.
        options.enable_cpu_mem_arena = False
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _session_of(self, request: object) -> ort.InferenceSession:
        tensor = pb_utils.get_input_tensor_by_name(request, LORAS.name)
        if self.loras is None or tensor is None:
            return self.session
        return self.loras.session(LoraSet.decode(tensor.as_numpy().tobytes()))

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                session = self._session_of(request)
                feeds: dict[str, np.ndarray] = {}
                for name in self.input_names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        feeds[name] = tensor.as_numpy()
                outputs = session.run(self.output_names, feeds)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(n, np.ascontiguousarray(o))
                            for n, o in zip(self.output_names, outputs, strict=True)
                        ]
                    )
                )
            except LoraMismatch as exc:  # the client's LoRA: a 422 naming its field (registry/contract.py)
                message = invalid_request_message(exc.field, str(exc))
                error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as exc:  # one bad request must not take the others down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.model_name}: {exc}")))
        return responses
