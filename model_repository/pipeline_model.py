"""Triton python-backend model for a family's pipeline: decodes request tensors, runs the stock diffusers pipeline
whose heavy modules call the component models by BLS, and answers images plus the serving checkpoint's label."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from registry import PIPELINE_INPUTS, SOURCE_PARAMETER_PREFIX, Task

from .bls import BlsClient
from .pipelines import GenerationRequest, InvalidRequest, Pipelines


def _tensor(request: object, name: str) -> torch.Tensor | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    # By DLPack, not as_numpy(): under numpy 2 the python backend hands out wrong numpy views (seen on the GPU machine).
    return None if tensor is None else torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu()


def _scalar(request: object, name: str) -> object:
    value = _tensor(request, name)
    if value is None:  # an empty text (e.g. no negative prompt) may arrive as no tensor at all
        return ""
    if value.dtype == torch.uint8:  # text: UTF-8 bytes (registry.PIPELINE_INPUTS)
        return bytes(value.tolist()).decode()
    return value.reshape(-1)[0].item()


def _image(request: object, name: str) -> np.ndarray | None:
    value = _tensor(request, name)
    return None if value is None else value.numpy().copy()


def _request(task: Task, request: object) -> GenerationRequest:
    """The decoded request tensors of `task` (registry.PIPELINE_INPUTS)."""
    names = {s.name for s in PIPELINE_INPUTS[task]}
    fields: dict = {
        "checkpoint": str(_scalar(request, "CHECKPOINT")),
        "prompt": str(_scalar(request, "PROMPT")),
        "negative_prompt": str(_scalar(request, "NEGATIVE_PROMPT")),
        "steps": int(_scalar(request, "STEPS")),
        "cfg": float(_scalar(request, "CFG")),
        "seed": int(_scalar(request, "SEED")),
        "num_images": int(_scalar(request, "NUM_IMAGES")),
    }
    if "WIDTH" in names:
        fields |= {"width": int(_scalar(request, "WIDTH")), "height": int(_scalar(request, "HEIGHT"))}
    if "DENOISE" in names:
        fields["denoise"] = float(_scalar(request, "DENOISE"))
    if "SOURCE_IMAGE" in names:
        fields["source_image"] = _image(request, "SOURCE_IMAGE")
    if "MASK_IMAGE" in names:
        fields["mask_image"] = _image(request, "MASK_IMAGE")
    references = [_image(request, n) for n in sorted(names) if n.startswith("REFERENCE_IMAGE_")]
    fields["reference_images"] = tuple(r for r in references if r is not None)
    return GenerationRequest(**fields)


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
        self.task = Task(params["task"])
        self.pipelines = Pipelines(
            family=params["family"],
            task=self.task,
            checkpoint_dirs={k: params[f"checkpoint_dir.{k}"] for k in keys},
            labels={k: params[SOURCE_PARAMETER_PREFIX + k] for k in keys},
            client=self.client,
            device=device,
            dtype=torch.bfloat16 if gpu else torch.float32,
        )

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                images, label, seconds = self.pipelines(_request(self.task, request))
                if self.client.profile:
                    pb_utils.Logger.log_info(f"pipeline {seconds * 1000:.0f} ms; {self.client.take_timings()}")
                outputs = {
                    "IMAGES": torch.from_numpy(images),
                    "MODEL": torch.tensor(list(label.encode()), dtype=torch.uint8),
                    "PIPELINE_S": torch.tensor([seconds], dtype=torch.float32),
                }
                # By DLPack, not numpy: numpy outputs fail when the stub's environment has numpy 2 (see registry).
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(t.contiguous()))
                            for name, t in outputs.items()
                        ]
                    )
                )
            except InvalidRequest as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
            except Exception as exc:  # reported to the caller as an internal error, the model stays up
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"pipeline failed: {exc!r}")))
        return responses
