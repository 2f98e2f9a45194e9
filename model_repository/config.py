"""config.pbtxt for every Triton model, generated from the registry, per serving profile.

Profiles: "cpu" (this machine, CI, `make serve`): every model on the python backend with KIND_CPU, components run by
ONNX Runtime. "gpu" (the H100): KIND_GPU; components whose registry backend is "tensorrt" become TensorRT plans keyed
by GPU compute capability so a plan never loads on a GPU it was not built for (names: plans.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from registry import (
    GPU_CAPABILITIES,
    TASKS,
    TENSORRT_VERSION,
    Component,
    Family,
    PipelineModel,
    TensorSpec,
)
from registry.tasks import LORAS

from .plans import cc_model_filenames

PROFILES = ("cpu", "gpu")
# Compute capability -> plan file, named by TensorRT version too (export/tensorrt_build.py writes them so).
PLAN_FILES = cc_model_filenames(TENSORRT_VERSION, GPU_CAPABILITIES)


def data_type(spec: TensorSpec, half: bool = False) -> str:
    # The wire protocol says BYTES; model configs spell the same type TYPE_STRING.
    if spec.dtype == "BYTES":
        return "TYPE_STRING"
    # On the GPU the float tensors between components travel in BF16, the precision the modules run in.
    return "TYPE_BF16" if half and spec.dtype == "FP32" and not spec.exact else f"TYPE_{spec.dtype}"


def _dims(spec: TensorSpec) -> str:
    return ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.dims)


def _tensors(kind: str, specs: Iterable[TensorSpec], half: bool = False) -> str:
    def row(s: TensorSpec) -> str:
        optional = " optional: true" if s.optional else ""
        return f'  {{ name: "{s.name}" data_type: {data_type(s, half)} dims: [ {_dims(s)} ]{optional} }}'

    rows = [row(s) for s in specs]
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _parameters(params: Mapping[str, str]) -> str:
    rows = [f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in sorted(params.items())]
    return "parameters [\n" + ",\n".join(rows) + "\n]\n" if rows else ""


def _instance_group(profile: str) -> str:
    kind = "KIND_GPU" if profile == "gpu" else "KIND_CPU"
    return f"instance_group [ {{ count: 1 kind: {kind} }} ]\n"


def _header(name: str, backend_line: str) -> str:
    # Diffusion tensors carry their own batch dim (max_batch_size 0, full dims); one explicit version.
    # The newest version serves: an updated artifact lands as version N+1 beside N, and Triton's reload of the model
    # (explicit model control) switches to it once it is loaded, N serving until then (stack/update.py).
    return f'name: "{name}"\n{backend_line}\nmax_batch_size: 0\nversion_policy: {{ latest: {{ num_versions: 1 }} }}\n'


def component_config(component: Component, profile: str, params: Mapping[str, str] | None = None) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    backend = component.backend(profile)
    if backend == "tensorrt":
        head = _header(component.triton_model, 'platform: "tensorrt_plan"')
        head += (
            "cc_model_filenames [\n"
            + ",\n".join(f'  {{ key: "{cc}" value: "{f}" }}' for cc, f in PLAN_FILES.items())
            + "\n]\n"
        )
    else:
        head = _header(component.triton_model, 'backend: "python"')
    # The CPU profile runs float32 ONNX; reduced precision is a GPU matter.
    precision = component.precision if profile == "gpu" else "fp32"
    all_params = {"runtime": backend, "precision": precision, **(params or {})}
    if component.accelerations and backend == "torch":
        all_params["accelerations"] = ",".join(component.accelerations)
    half = profile == "gpu"
    # A TensorRT plan takes no LoRA set: its weights change through the refitter, not per request.
    inputs = (*component.inputs, LORAS) if component.lora and backend != "tensorrt" else component.inputs
    return (
        head
        + _tensors("input", inputs, half)
        + _tensors("output", component.outputs, half)
        + _instance_group(profile)
        + _parameters(all_params)
    )


def pipeline_config(family: Family, pipeline: PipelineModel, profile: str, params: Mapping[str, str]) -> str:
    """The config of one of `family`'s pipeline models: its task's request and response tensors (registry/tasks.py)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    task = TASKS[pipeline.task]
    return (
        _header(pipeline.triton_model, 'backend: "python"')
        # Decoupled: progress responses stream out during the denoising loop, the output last (pipeline_model.py).
        + "model_transaction_policy { decoupled: true }\n"
        + _tensors("input", task.inputs)
        + _tensors("output", task.output.stream_tensors)
        + _instance_group(profile)
        # No dynamic_batching (nor its queue policy): with a decoupled model it holds a request that arrives while
        # the instance is busy for its 500 ms wait (measured: perf/results/cpu/jobs_cancel.md), since the instance's
        # end is not signalled to it. Admission is bounded by the API's group gate (api/gate.py), Triton's only
        # client (it listens on 127.0.0.1), and requests wait in Triton's default FIFO.
        + _parameters({"family": family.name, "task": str(pipeline.task), "profile": profile, **params})
    )
