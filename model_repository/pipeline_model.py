"""Triton python-backend model for a family's pipeline: decodes its task's request tensors, runs the pipeline whose
heavy modules call the component models by BLS, and answers images plus the serving checkpoint's label."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from components.lora_set import LoraSet
from registry import SOURCE_PARAMETER_PREFIX, TASKS, Kind, Task, TaskSpec, invalid_request_message
from registry.tasks import CHECKPOINT, LORAS, MEDIA, MODEL, PIPELINE_S, PROGRESS

from .bls import BlsClient, ComponentRefused, RequestCancelled
from .pipelines import InvalidRequest, PipelineRequest, Pipelines


def _tensor(request: object, name: str) -> torch.Tensor | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    # By DLPack, not as_numpy(): under numpy 2 the python backend hands out wrong numpy views (seen on the GPU machine).
    return None if tensor is None else torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu()


def _decode(spec: TaskSpec, request: object, name: str) -> Any:
    """One request tensor as its field's value: text as str, numbers as int/float, media as a uint8 array; None
    when an optional input was left out (an empty text may arrive as no tensor at all: "")."""
    value = _tensor(request, name)
    kind = Kind.TEXT if name in (CHECKPOINT.name, LORAS.name) else spec.field_of(name).kind
    if value is None:
        return "" if kind in (Kind.TEXT, Kind.CHOICE) else None
    if kind in (Kind.TEXT, Kind.CHOICE):  # UTF-8 bytes in a UINT8 tensor (registry/tasks.py)
        return bytes(value.tolist()).decode()
    if kind in MEDIA:
        return value.numpy().copy()
    scalar = value.reshape(-1)[0].item()
    return int(scalar) if kind is Kind.INTEGER else float(scalar)


def _request(spec: TaskSpec, request: object) -> PipelineRequest:
    """The decoded request tensors of `spec`'s task (TaskSpec.inputs)."""
    values = {s.name: _decode(spec, request, s.name) for s in spec.inputs}
    loras = values.pop(LORAS.name)
    return PipelineRequest(
        checkpoint=str(values.pop(CHECKPOINT.name)), tensors=values, loras=LoraSet.decode(loras) if loras else None
    )


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        keys = [k for k in params["checkpoints"].split(",") if k]
        # The pipeline's own work (scheduler, packing, post-processing) is light; the cores belong to the components.
        torch.set_num_threads(1)
        gpu = params.get("profile") == "gpu"
        self.client = BlsClient(gpu=gpu, profile=os.environ.get("RYLA_PROFILE_BLS") == "1")
        device = torch.device("cuda", int(args.get("model_instance_device_id", 0))) if gpu else torch.device("cpu")
        self.task = TASKS[Task(params["task"])]
        self.pipelines = Pipelines(
            family=params["family"],
            task=self.task.task,
            checkpoint_dirs={k: params[f"checkpoint_dir.{k}"] for k in keys},
            labels={k: params[SOURCE_PARAMETER_PREFIX + k] for k in keys},
            client=self.client,
            device=device,
            dtype=torch.bfloat16 if gpu else torch.float32,
        )

    def execute(self, requests: list) -> None:
        # Decoupled (config.py): each request's answers go out through its response sender, not as a return value.
        for request in requests:
            sender = request.get_response_sender()
            final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            try:
                sender.send(self._answer(request, sender), flags=final)
            except Exception as exc:  # the model stays up; the caller gets the error
                sender.send(pb_utils.InferenceResponse(error=self._error(exc)), flags=final)

    def _answer(self, request: object, sender: object) -> object:
        if sender.is_cancelled():  # cancelled while it waited in Triton's queue
            raise RequestCancelled("cancelled before it started")

        def progress(step: int, steps: int) -> None:
            # Between steps: the stream carries "step i of n" to the caller (jobs report it, api/jobs.py).
            sender.send(_response({PROGRESS.name: torch.tensor([step, steps], dtype=torch.int32)}))

        with self.client.serving(sender.is_cancelled):
            images, label, seconds = self.pipelines(_request(self.task, request), progress)
        if self.client.profile:
            pb_utils.Logger.log_info(f"pipeline {seconds * 1000:.0f} ms; {self.client.take_timings()}")
        return _response(
            {
                self.task.output.pixels.name: torch.from_numpy(images),
                MODEL.name: torch.tensor(list(label.encode()), dtype=torch.uint8),
                PIPELINE_S.name: torch.tensor([seconds], dtype=torch.float32),
            }
        )

    @staticmethod
    def _error(exc: Exception) -> object:
        if isinstance(exc, RequestCancelled):
            return pb_utils.TritonError(str(exc), pb_utils.TritonError.CANCELLED)
        if isinstance(exc, (InvalidRequest, ComponentRefused)):
            # The client's fault: the field in the message (registry/contract.py), Triton's INVALID_ARG code.
            message = str(exc) if isinstance(exc, InvalidRequest) else invalid_request_message(exc.field, str(exc))
            return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
        # Wrapped, so no failure's text can pass for the contract's message (api/ answers it as a 500).
        return pb_utils.TritonError(f"pipeline failed: {exc!r}")


def _response(outputs: dict[str, torch.Tensor]) -> object:
    # By DLPack, not numpy: numpy outputs fail when the stub's environment has numpy 2 (registry/tasks.py).
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(t.contiguous()))
            for name, t in outputs.items()
        ]
    )
