"""Triton python-backend model running one component as its torch module, tensors in and out by DLPack.

On the GPU profile: CUDA, BF16, the registry's speed-ups (fused QKV, FP8 matmuls, torch.compile with on-disk caches,
CUDA graphs); TensorRT plans replace it per component once they are built, with the same inputs and outputs. On the
CPU profile (components the registry runs in torch everywhere, like a vision-language text encoder): float32, as loaded.
A component with a merged LoRA (registry `merged_lora`) gets it fused into its weights at load; one that takes
per-request LoRAs (registry `lora`) merges each request's set in place (components/lora_apply.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils

from components.adapters import adapter_of
from components.lora_apply import InPlaceLoras, base_copies
from components.lora_merge import merge_lora
from components.lora_set import LoraMismatch, LoraSet
from components.lora_weights import LoraReader
from registry import LORAS, component_of, invalid_request_message
from registry.tasks import LORAS as LORAS_INPUT

from .accelerate import Acceleration, accelerate, enable_compile_cache


def _check_cudnn(model_name: str) -> None:
    """Say loudly when this process cannot use the cuDNN torch was built with: torch then falls back to other
    attention kernels without a word (a system cuDNN first on LD_LIBRARY_PATH cost a 20-block DiT 20 % per step)."""
    try:
        torch.backends.cudnn.version()
    except RuntimeError as exc:
        pb_utils.Logger.log_error(f"{model_name}: cuDNN unusable, attention runs on slower kernels: {exc}")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        family, self.component = component_of(args["model_name"])
        gpu = args.get("model_instance_kind") == "GPU"
        t0 = time.perf_counter()
        adapter = adapter_of(family.name, self.component.exporter)
        module = adapter.load(Path(params["checkpoint_dir"]) / self.component.subfolder)
        if self.component.merged_lora:
            lora = LORAS[self.component.merged_lora]
            merge_lora(module.model, Path(params["merged_lora_file"]), family.pipeline_class, lora.scale)
        self.cuda_graphs = False
        if gpu:
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", 0)))
            _check_cudnn(args["model_name"])
            enable_compile_cache(
                Path(params.get("compile_cache", os.environ.get("RYLA_COMPILE_CACHE", "/tmp/ryla-inductor")))
            )
            self.module = module.to(self.device, torch.bfloat16).eval()
            self.loras = self._loras(params, family.pipeline_class)
            accelerations = set(filter(None, params.get("accelerations", "").split(",")))
            how = Acceleration.of(accelerations, params["precision"], self.component.fp8_layers)
            self.cuda_graphs = how.cuda_graphs
            # The adapters wrap the diffusers/transformers module as `.model`; the speed-ups apply to that module.
            accelerate(self.module.model, how, log=lambda m: pb_utils.Logger.log_info(f"{args['model_name']}: {m}"))
        else:
            self.device = torch.device("cpu")
            self.module = module.float().eval()
            self.loras = self._loras(params, family.pipeline_class)
        if self.loras is not None:
            self.loras.bind(self.module.model)
        self.profile = os.environ.get("RYLA_PROFILE_BLS") == "1"
        self.compute_s, self.launch_s, self.calls = 0.0, 0.0, 0
        # RYLA_PROFILE_TRACE_CALL=n (with RYLA_PROFILE_BLS=1): the n-th call runs under torch.profiler and its
        # busiest GPU kernels go to the log, to compare a served call with the same module in-process.
        self.trace_call = int(os.environ.get("RYLA_PROFILE_TRACE_CALL", "0")) if self.profile else 0
        if self.profile:
            cpus = len(os.sched_getaffinity(0))
            pb_utils.Logger.log_info(f"{args['model_name']}: {cpus} CPUs, torch threads {torch.get_num_threads()}")
        self.input_names = [t["name"] for t in config["input"] if t["name"] != LORAS_INPUT.name]
        self.output_names = [t["name"] for t in config["output"]]
        pb_utils.Logger.log_info(f"{args['model_name']}: ready in {time.perf_counter() - t0:.1f}s")

    def _loras(self, params: dict[str, str], pipeline_class: str) -> InPlaceLoras | None:
        """Per-request LoRAs merged in place, from copies of the base weights taken before the speed-ups."""
        if not self.component.lora:
            return None
        reader = LoraReader(Path(params["checkpoint_dir"]) / self.component.subfolder, pipeline_class)
        return InPlaceLoras(reader, base_copies(self.module.model))

    def _apply_loras(self, request: object) -> None:
        if self.loras is None:
            return
        tensor = pb_utils.get_input_tensor_by_name(request, LORAS_INPUT.name)
        loras = None if tensor is None else LoraSet.decode(tensor.as_numpy().tobytes())
        seconds = self.loras.apply(loras)
        if seconds:
            pb_utils.Logger.log_info(f"{self.component.triton_model}: LoRA set switched in {seconds * 1000:.0f} ms")

    def _traced(self, inputs: list[torch.Tensor]) -> object:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as trace:
            outputs = self.module(*inputs)
            torch.cuda.synchronize()
        table = trace.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
        pb_utils.Logger.log_info(f"{self.component.triton_model}: call {self.trace_call} under torch.profiler\n{table}")
        return outputs

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                self._apply_loras(request)
                inputs = []
                for name in self.input_names:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        inputs.append(torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).to(self.device))
                t0 = time.perf_counter()
                with torch.inference_mode():
                    if self.cuda_graphs:
                        # A new step: the graph may overwrite its previous outputs (already sent, see below).
                        torch.compiler.cudagraph_mark_step_begin()
                    traced = self.calls + 1 == self.trace_call
                    outputs = self._traced(inputs) if traced else self.module(*inputs)
                if self.profile and self.device.type == "cuda":
                    # launch: until the forward returns (the CPU queueing kernels); compute: until the GPU is done.
                    self.launch_s += time.perf_counter() - t0
                    torch.cuda.synchronize()
                    self.compute_s += time.perf_counter() - t0
                    self.calls += 1
                    if self.calls % 28 == 0:
                        pb_utils.Logger.log_info(
                            f"{self.component.triton_model}: {self.calls} calls, compute {self.compute_s * 1000:.0f} ms"
                            f" (launch {self.launch_s * 1000:.0f} ms)"
                        )
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                if self.cuda_graphs:
                    # CUDA-graph outputs live in the graph's memory pool, which the next replay overwrites.
                    outputs = tuple(o.clone() for o in outputs)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor.from_dlpack(n, torch.utils.dlpack.to_dlpack(o.contiguous()))
                            for n, o in zip(self.output_names, outputs, strict=True)
                        ]
                    )
                )
            except LoraMismatch as exc:  # the client's LoRA: a 422 naming its field (registry/contract.py)
                message = invalid_request_message(exc.field, str(exc))
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
                )
            except Exception as exc:  # one bad request must not take the others down
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.component.triton_model}: {exc}"))
                )
        return responses
