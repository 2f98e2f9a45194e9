"""Exported ONNX components -> TensorRT plans, with min/opt/max profiles from the registry, one shared timing cache
and a manifest, so a model, precision, profile, TensorRT or GPU change rebuilds exactly the plans it affects.

Strongly typed networks only (TensorRT 11 and TensorRT for RTX have nothing else): a plan's precision is its
graph's. "fp32" builds the CPU profile's export, "bf16" the BF16 export (export_family(dtype="bfloat16"), in
<onnx_dir>/bf16), "fp8" the FP8 Q/DQ graph that export/fp8_qdq.py calibrates and writes from the BF16 export.
Which TensorRT builds (the datacenter one on Modal, TensorRT for RTX on the CPU install) is
export/tensorrt_flavours.py's business; this module is one code path for both. Profiles, plan names, the checks of
profiles and types against the graph and the manifest's stale/fresh decisions are plain Python and ONNX;
`build_family_engines` takes its build step as an argument so the manifest's decisions are tested without
spending a real build on each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from artifacts import file_sha256, write_atomic
from model_repository.config import data_type
from model_repository.plans import PLAN_VERSION, plan_filename
from registry import FAMILIES, Component, Dim, Family

from . import manifest as mf
from . import tensorrt_flavours as flavours
from .tensorrt_flavours import TensorRT

Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) shape of one input
Profiles = dict[str, Profile]
Log = Callable[[str], None]

BUILDER_VERSION = 2  # bump when this module changes what a build produces (part of every plan's key)
PRECISIONS = ("fp32", "bf16", "fp8")
TIMING_CACHE = "timing.cache"

# last_run values
BUILT, UNCHANGED = "built", "unchanged"


# ONNX element types of FP8 tensors (onnx.TensorProto.FLOAT8*).
_FP8_TYPES = {
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# ModelOpt's older FP8 export: custom ops in the "trt" domain that TensorRT's ONNX parser reads as FP8 Q/DQ.
_TRT_FP8_OPS = {"TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"}


class BuildError(RuntimeError):
    pass


# --- profiles -------------------------------------------------------------------------------------------------------


def component_dims(component: Component, family: Family) -> dict[str, Dim]:
    """The Dim ranges `component`'s engine profile covers: the family's, replaced by the component's own
    `profile_dims` (registry) where it has them (a VAE capped below the family's largest size)."""
    dims = {d.name: d for d in family.dims}
    for d in component.profile_dims:
        dims[d.name] = d
    for d in dims.values():
        if not d.min <= d.opt <= d.max:
            raise ValueError(f"{component.triton_model}: dim {d.name} needs min <= opt <= max, got {d}")
    return dims


def dim_relation_problems(dims: Mapping[str, Dim], family: Family) -> list[str]:
    """Ranges that disagree with how the pipelines derive one size from another; [] when consistent.

    height = family.vae_scale * latent_height (same for width) at min, opt and max; image_tokens covers the packed
    latent, (latent_height / patch) * (latent_width / patch): equal at opt, at most at min and at least at max (an
    edit family adds condition images' tokens to the same sequence, so its image_tokens range is wider than one
    image's). Only names present in `dims` are checked, so this applies to a family's dims and to one component's."""
    scale, patch = family.vae_scale, family.patch
    problems = []
    for px, lat in (("height", "latent_height"), ("width", "latent_width")):
        if px in dims and lat in dims:
            for field in ("min", "opt", "max"):
                p, q = getattr(dims[px], field), getattr(dims[lat], field)
                if p != scale * q:
                    problems.append(f"{px}.{field}={p} != {scale} * {lat}.{field}={q}")
    if {"image_tokens", "latent_height", "latent_width"} <= dims.keys():
        tokens, h, w = dims["image_tokens"], dims["latent_height"], dims["latent_width"]
        packed = {f: (getattr(h, f) // patch) * (getattr(w, f) // patch) for f in ("min", "opt", "max")}
        if tokens.min > packed["min"]:
            problems.append(f"image_tokens.min={tokens.min} > packed latent min {packed['min']}")
        if tokens.opt != packed["opt"]:
            problems.append(f"image_tokens.opt={tokens.opt} != packed latent opt {packed['opt']}")
        if tokens.max < packed["max"]:
            problems.append(f"image_tokens.max={tokens.max} < packed latent max {packed['max']}")
    return problems


def narrower_than_family(component: Component, family: Family) -> dict[str, tuple[int, int]]:
    """Dims the component's profile covers less of than the family allows: name -> (profile max, family max).
    A request inside the family's limits but outside these fails in this engine (e.g. a capped VAE)."""
    used = {d for spec in component.inputs for d in spec.dims if isinstance(d, str)}
    mine = component_dims(component, family)
    return {
        name: (mine[name].max, family.dim(name).max)
        for name in sorted(used)
        if mine[name].max < family.dim(name).max or mine[name].min > family.dim(name).min
    }


def onnx_io_shapes(onnx_path: Path) -> tuple[dict[str, tuple[int | str, ...]], dict[str, tuple[int | str, ...]]]:
    """(inputs, outputs): name -> shape of the graph's inputs and outputs, a dim as its size or its symbolic name
    ("?" when neither). Reads the graph only (load_external_data=False): cheap for models of any size."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}  # old IR versions list initializers as inputs too

    def shape(value: onnx.ValueInfoProto) -> tuple[int | str, ...]:
        dims = value.type.tensor_type.shape.dim
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)

    inputs = {v.name: shape(v) for v in graph.input if v.name not in initializers}
    return inputs, {v.name: shape(v) for v in graph.output}


def input_profiles(component: Component, family: Family, onnx_path: Path | None = None) -> Profiles:
    """min/opt/max shape of every input of `component`, in input order.

    Symbolic dims take the range of `component_dims` (the family's Dim, narrowed for the VAE), so every input that
    names a dim gets the same min/opt/max for it. A -1 dim (fixed by the checkpoint's config: hidden widths, latent
    channels) takes its size from the exported ONNX graph's input; without `onnx_path` that is an error naming the
    dim. Given a graph, its inputs must be the registry's, each axis the registry calls symbolic must be dynamic
    there under the same name, and fixed sizes must agree.
    """
    dims = component_dims(component, family)
    graph_inputs = onnx_io_shapes(onnx_path)[0] if onnx_path is not None else None
    if graph_inputs is not None and list(graph_inputs) != [s.name for s in component.inputs]:
        raise ValueError(
            f"{component.triton_model}: {onnx_path} has inputs {list(graph_inputs)}, "
            f"the registry {[s.name for s in component.inputs]}"
        )
    profiles: Profiles = {}
    for spec in component.inputs:
        graph_shape = graph_inputs[spec.name] if graph_inputs is not None else None
        if graph_shape is not None and len(graph_shape) != len(spec.dims):
            raise ValueError(
                f"{component.triton_model}: {spec.name} has rank {len(graph_shape)} in the ONNX graph, "
                f"{len(spec.dims)} in the registry"
            )
        lo, opt, hi = [], [], []
        for axis, dim in enumerate(spec.dims):
            where = f"{component.triton_model}: {spec.name} axis {axis}"
            in_graph = graph_shape[axis] if graph_shape is not None else None
            if isinstance(dim, str):
                if dim not in dims:
                    raise ValueError(f"{where} names dim {dim!r}, which family {family.name} does not define")
                if in_graph is not None and in_graph != dim:
                    raise ValueError(
                        f"{where} ({dim!r}) is {in_graph!r} in the ONNX graph: the engine could not "
                        "cover the registry's range"
                    )
                d = dims[dim]
                sizes = (d.min, d.opt, d.max)
            elif dim == -1:
                if in_graph is None:
                    raise ValueError(
                        f"{where} is fixed by the checkpoint config (-1 in the registry): give the "
                        "exported ONNX (onnx_path) to read its size"
                    )
                if not isinstance(in_graph, int) or in_graph <= 0:
                    raise ValueError(f"{where} is -1 in the registry (a fixed size) but {in_graph!r} in the graph")
                sizes = (in_graph,) * 3
            else:
                if in_graph is not None and in_graph != dim:
                    raise ValueError(f"{where} is {dim} in the registry, {in_graph!r} in the ONNX graph")
                sizes = (dim,) * 3
            for out, size in zip((lo, opt, hi), sizes, strict=True):
                out.append(size)
        profiles[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
    return profiles


def check_profiles(onnx_path: Path, profiles: Mapping[str, Profile]) -> None:
    """The profiles fit the graph: one per graph input, same rank, min <= opt <= max, fixed sizes kept. Runs on the
    CPU before TensorRT is touched, so a wrong profile fails in seconds rather than after parsing a large model."""
    inputs = onnx_io_shapes(onnx_path)[0]
    if set(inputs) != set(profiles):
        raise ValueError(f"{onnx_path}: graph inputs {sorted(inputs)}, profiles for {sorted(profiles)}")
    for name, (lo, opt, hi) in profiles.items():
        shape = inputs[name]
        if not len(lo) == len(opt) == len(hi) == len(shape):
            raise ValueError(f"{name}: profile ranks {len(lo)}/{len(opt)}/{len(hi)}, graph rank {len(shape)}")
        for axis, (a, b, c, g) in enumerate(zip(lo, opt, hi, shape, strict=True)):
            if not 0 < a <= b <= c:
                raise ValueError(f"{name} axis {axis}: needs 0 < min <= opt <= max, got {a}/{b}/{c}")
            if isinstance(g, int) and g > 0 and not a == b == c == g:
                raise ValueError(f"{name} axis {axis} is {g} in the graph, the profile says {a}/{b}/{c}")


# --- FP8 preconditions ----------------------------------------------------------------------------------------------


def quantize_nodes(onnx_path: Path) -> dict[str, int]:
    """Q/DQ nodes in the graph, its subgraphs and local functions: {"fp8": n, "other": m}.

    A QuantizeLinear is FP8 when its zero point or `output_dtype` is an FP8 type; a DequantizeLinear when its input
    (an FP8 initializer, as ModelOpt stores quantized weights, or an FP8 Q's output) or zero point is. ModelOpt's
    older TRT_FP8* ops always are. "other" are INT8/INT4 Q/DQ."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    elem: dict[str, int] = {}  # value name -> element type, where known without shape inference
    nodes: list[onnx.NodeProto] = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        elem.update({t.name: t.data_type for t in graph.initializer})
        elem.update({v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)})
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
                    elem[node.output[0]] = attr.t.data_type
                graphs.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs))
    for function in model.functions:
        nodes.extend(function.node)
    counts = {"fp8": 0, "other": 0}
    for node in nodes:  # ONNX keeps nodes in topological order: a Q's output type is known before its DQ
        if node.op_type in _TRT_FP8_OPS:
            counts["fp8"] += 1
            continue
        if node.op_type not in _QDQ_OPS:
            continue
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        types = {elem.get(zero_point)} | {a.i for a in node.attribute if a.name == "output_dtype"}
        if node.op_type == "DequantizeLinear":
            types.add(elem.get(node.input[0]))
        fp8 = bool(types & _FP8_TYPES)
        if node.op_type == "QuantizeLinear" and fp8:
            elem[node.output[0]] = next(iter(types & _FP8_TYPES))
        counts["fp8" if fp8 else "other"] += 1
    return counts


def require_fp8_qdq(onnx_path: Path) -> int:
    """The number of FP8 Q/DQ nodes; BuildError if there are none. TensorRT runs a layer in FP8 only where the
    graph says so with Q/DQ (explicit quantization); it does not pick FP8 on its own."""
    counts = quantize_nodes(onnx_path)
    if counts["fp8"]:
        return counts["fp8"]
    found = f" (it has {counts['other']} non-FP8 Q/DQ nodes: INT8/INT4, not FP8)" if counts["other"] else ""
    raise BuildError(
        f"{onnx_path}: precision 'fp8' needs FP8 QuantizeLinear/DequantizeLinear nodes in the ONNX graph and it has "
        f"none{found}. TensorRT quantizes explicitly: build from the calibrated Q/DQ graph of export/fp8_qdq.py "
        "(build_family_engines does, given fp8=Fp8Inputs(...)), or a ModelOpt FP8 export, or build 'bf16'."
    )


# --- manifest inputs ------------------------------------------------------------------------------------------------


def refittable(component: Component, family: Family) -> bool:
    """Refittable when LoRA weights reach this component: it merges a LoRA, or it serves the role that a LoRA
    touches elsewhere in its family (two transformers of one checkpoint, one with a distillation LoRA merged).

    REFIT lets a LoRA update (or later, per-request LoRA) swap weights in seconds (refit_engine) instead of a full
    build; the cost is that TensorRT cannot fold those weights into constants, so other components stay
    non-refittable and fully optimised."""
    lora_roles = {c.role for c in family.components if c.merged_lora}
    return component.merged_lora is not None or component.role in lora_roles


# ONNX element type names as Triton and the registry spell them.
_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
}
# The float type of a graph's weights for each precision: strongly typed, the graph is the precision.
WEIGHT_TYPES = {"fp32": ("FP32",), "bf16": ("BF16",), "fp8": ("BF16", "FP32")}  # fp8: Q/DQ on a BF16 or FP32 graph


def plan_io_types(component: Component, precision: str) -> dict[str, str]:
    """The type of each plan input and output as Triton's GPU config declares it (model_repository/config.py's
    rule, for a component running in BF16 or FP8: FP32 tensors that are not `exact` travel in BF16); an FP32 plan
    keeps the registry's types."""
    half = precision != "fp32"
    return {s.name: data_type(s, half).removeprefix("TYPE_") for s in (*component.inputs, *component.outputs)}


def graph_types(onnx_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """(I/O name -> type name, float initializer type name -> count) of a graph, read without its weights."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    io = {v.name: _TYPE_NAMES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)) for v in graph.input}
    io.update({v.name: _TYPE_NAMES.get(v.type.tensor_type.elem_type, "?") for v in graph.output})
    weights: dict[str, int] = {}
    for t in graph.initializer:
        name = _TYPE_NAMES.get(t.data_type)
        if name in ("FP32", "BF16", "FP16") and len(t.dims) >= 2:  # matrices and kernels: the weights, not scalars
            weights[name] = weights.get(name, 0) + 1
    return io, weights


def check_graph_types(onnx_path: Path, precision: str, io_types: Mapping[str, str] | None) -> str:
    """The graph is of `precision` (its weights' float type) and, given `io_types`, its inputs and outputs have those
    types; returns the weights' type. On the CPU, before TensorRT loads: a strongly typed plan takes both from the
    graph, and a plan whose I/O types differ from its Triton config does not load."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    io, weights = graph_types(onnx_path)
    kinds = sorted(weights)
    if len(kinds) != 1 or kinds[0] not in WEIGHT_TYPES[precision]:
        raise BuildError(
            f"{onnx_path}: a strongly typed {precision} plan needs {' or '.join(WEIGHT_TYPES[precision])} weights, "
            f"the graph has {weights or 'none'}: export it in that precision (export_family(dtype=...))"
        )
    wrong = {n: (io.get(n), t) for n, t in (io_types or {}).items() if io.get(n) != t}
    if wrong:
        detail = ", ".join(f"{n} is {g} (config: {t})" for n, (g, t) in sorted(wrong.items()))
        raise BuildError(f"{onnx_path}: inputs/outputs differ from the serving config's types: {detail}")
    return kinds[0]


def _json_profiles(profiles: Mapping[str, Profile]) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in p] for name, p in profiles.items()}


def plan_key(
    *,
    onnx_entry: Mapping[str, Any],
    precision: str,
    profiles: Mapping[str, Profile],
    flags: Mapping[str, Any],
    tensorrt: str,
    compute_capability: str,
) -> str:
    """Everything a plan depends on. The ONNX enters by the export manifest's sha256 of model.onnx *and* its
    export key: with external weights, model.onnx holds only the graph, so new weights of the same shapes leave its
    sha256 unchanged while the export key (checkpoint content hash, LoRA hash) moves. `tensorrt`: flavour and
    version ("trt10.13.3.9", "trtrtx1.7.1.116")."""
    return mf.artifact_key(
        onnx={"sha256": onnx_entry["sha256"], "export_key": onnx_entry.get("key")},
        precision=precision,
        profiles=_json_profiles(profiles),
        flags=dict(flags),
        tensorrt=tensorrt,
        compute_capability=compute_capability,
        builder=BUILDER_VERSION,
    )


# --- TensorRT -------------------------------------------------------------------------------------------------------


def _tensorrt(tensorrt: TensorRT | None) -> TensorRT:
    try:
        return tensorrt if tensorrt is not None else flavours.installed()
    except flavours.TensorRTMissing as e:
        raise BuildError(str(e)) from e


class _ProgressPrinter:
    """Turns TensorRT's progress callbacks into a few log lines: phases down to `max_depth`, each with its time,
    and the top-level phases' steps in quarters. Thread-safe: TensorRT calls it from its own threads."""

    def __init__(self, log: Log, max_depth: int = 1) -> None:
        self._log = log
        self._max_depth = max_depth
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int, float, int]] = {}  # name -> (depth, steps, start, last quarter)

    def start(self, phase: str, parent: str | None, steps: int) -> None:
        with self._lock:
            depth = self._phases[parent][0] + 1 if parent in self._phases else 0
            self._phases[phase] = (depth, steps, time.perf_counter(), 0)
            if depth <= self._max_depth:
                self._log(f"[tensorrt] {'  ' * depth}{phase} ({steps} steps)")

    def step(self, phase: str, step: int) -> bool:
        with self._lock:
            if phase in self._phases:
                depth, steps, t0, last = self._phases[phase]
                quarter = 4 * (step + 1) // max(steps, 1)
                if depth == 0 and steps >= 8 and quarter > last:
                    self._phases[phase] = (depth, steps, t0, quarter)
                    self._log(f"[tensorrt] {phase}: {step + 1}/{steps}")
        return True  # False would cancel the build

    def finish(self, phase: str) -> None:
        with self._lock:
            depth, _, t0, _ = self._phases.pop(phase, (0, 0, time.perf_counter(), 0))
            if depth <= self._max_depth:
                self._log(f"[tensorrt] {'  ' * depth}{phase} done in {time.perf_counter() - t0:.1f}s")


def _progress_monitor(trt: Any, printer: _ProgressPrinter) -> Any:
    """A trt.IProgressMonitor (TensorRT >= 10) forwarding to `printer`; defined here because trt loads lazily.
    Exceptions never cross into TensorRT's threads."""

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with contextlib.suppress(Exception):  # a progress line is never worth a crashed build
                printer.start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with contextlib.suppress(Exception):
                return printer.step(phase_name, step)
            return True

        def phase_finish(self, phase_name: str) -> None:
            with contextlib.suppress(Exception):
                printer.finish(phase_name)

    return ProgressMonitor()


def _parse_errors(parser: Any) -> str:
    return "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))


def network_summary(trt: Any, network: Any) -> dict[str, Any]:
    """What the parsed network says before any GPU is involved: its layer count and the matrix multiplies both of
    whose inputs are dequantized from FP8 (the GEMMs TensorRT fuses with their Q/DQ into FP8 GEMMs)."""
    producers: dict[str, Any] = {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        for k in range(layer.num_outputs):
            producers[layer.get_output(k).name] = layer

    def from_fp8(tensor: Any) -> bool:
        dq = producers.get(tensor.name)
        # The parser broadcasts a 2-D weight to the activation's rank with a Shuffle: layout only, TensorRT moves
        # Q/DQ across it when it fuses.
        while dq is not None and dq.type == trt.LayerType.SHUFFLE and dq.num_inputs:
            dq = producers.get(dq.get_input(0).name)
        if dq is None or dq.type != trt.LayerType.DEQUANTIZE:
            return False
        q = producers.get(dq.get_input(0).name)
        return q is not None and q.type == trt.LayerType.QUANTIZE and q.get_output(0).dtype == trt.fp8

    gemms = [layer for layer in layers if layer.type == trt.LayerType.MATRIX_MULTIPLY]
    fp8 = [g.name for g in gemms if all(from_fp8(g.get_input(k)) for k in range(2))]
    return {"layers": len(layers), "matrix_multiplies": len(gemms), "fp8_matrix_multiplies": len(fp8)}


def _capturing_logger(trt: Any, log: Log) -> Any:
    """A trt.ILogger that forwards warnings and errors to `log` and keeps the engine's layer listing, which TensorRT
    (for RTX, with ProfilingVerbosity.DETAILED) prints at VERBOSE once the plan is built: each fused layer with its
    type and its inputs' and constants' data types, the only per-layer precision visible without a GPU."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.layers: str | None = None
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            with contextlib.suppress(Exception):  # never raise into TensorRT
                if msg.startswith("Layers:"):
                    self.layers = msg
                elif int(severity) <= int(trt.ILogger.Severity.WARNING):
                    log(f"[tensorrt] {msg}")
                    if int(severity) <= int(trt.ILogger.Severity.ERROR):
                        self.errors.append(msg)

    return Logger()


_LAYER = re.compile(
    r"Name: (?P<name>.*?), LayerType: (?P<type>\w+), "
    r"Inputs: \[(?P<inputs>.*?)\], Constants: \[(?P<consts>.*?)\], Outputs:"
)


_GEMM_TYPES = (("FP8", "FP8"), ("BFloat16", "BF16"), ("Half", "FP16"), ("Float", "FP32"))


def gemm_precisions(layers: str | None) -> dict[str, Any] | None:
    """From the engine's layer listing (_capturing_logger): how many GEMM layers read FP8 (inputs and weights),
    BF16 or FP32, and the names of the FP8 ones (TensorRT names a fused layer after its ONNX nodes, e.g.
    'node_MatMul_136+node_MatMul_134+node_MatMul_132_myl0_21' for Q, K and V fused). None when TensorRT printed no
    listing (the datacenter TensorRT lists layers through its engine inspector, on a GPU, instead)."""
    if layers is None:
        return None
    counts: dict[str, int] = {}
    fp8: list[str] = []
    for line in layers.splitlines():
        match = _LAYER.search(line)
        if match is None or match["type"] != "gemm":
            continue
        types = set(re.findall(r"Datatype: (\w+)", match["inputs"]))  # what the GEMM reads (its weights match)
        kind = next((name for t, name in _GEMM_TYPES if t in types), "+".join(sorted(types)))
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "FP8":
            fp8.append(match["name"])
    return {"gemms": counts, "fp8_gemms": fp8}


def build_engine(
    onnx_path: Path,
    out_path: Path,
    profiles: Mapping[str, Profile],
    *,
    precision: str,
    timing_cache_path: Path,
    compute_capability: str,
    optimization_level: int = 3,
    refittable: bool = False,
    workspace_gb: float | None = None,
    io_types: Mapping[str, str] | None = None,
    tensorrt: TensorRT | None = None,
    log: Log = print,
) -> dict:
    """Build one strongly typed plan from `onnx_path` (external weights beside it are read by the parser) into
    `out_path`, for `compute_capability`.

    Strongly typed, the only mode TensorRT 11 and TensorRT for RTX keep: every tensor's type is the graph's, so
    `precision` is a claim about the graph that is checked, not a flag (check_graph_types): "fp32" (the CPU export),
    "bf16" (a BF16 export: BF16 weights, torch's own upcasts kept), "fp8" (a Q/DQ graph of export/fp8_qdq.py: FP8
    only between its QuantizeLinear/DequantizeLinear nodes, which TensorRT fuses into FP8 GEMMs; refused on the CPU
    without them). io_types: the types Triton's config declares for the plan's inputs and outputs (plan_io_types).

    profiles: input name -> (min, opt, max) shapes, one optimization profile. timing_cache_path: loaded when
    present (a cache from another GPU or TensorRT is dropped, with a log line) and saved back after the build, so
    later builds reuse layer timings (the datacenter TensorRT; TensorRT for RTX has none). refittable:
    BuilderFlag.REFIT, weights named by ONNX initializer (refit_engine). tensorrt: which TensorRT builds (default:
    the installed one, export/tensorrt_flavours.py).

    Returns the manifest record: tensorrt, compute_capability, precision, profiles, flags, network, seconds, bytes.
    A graph TensorRT's parser refuses raises BuildError with the parser's own messages.
    """
    onnx_path, out_path, timing_cache_path = Path(onnx_path), Path(out_path), Path(timing_cache_path)
    if not 0 <= optimization_level <= 5:
        raise ValueError(f"builder optimization level {optimization_level}: TensorRT takes 0..5")
    check_profiles(onnx_path, profiles)
    weights = check_graph_types(onnx_path, precision, io_types)
    qdq = require_fp8_qdq(onnx_path) if precision == "fp8" else 0

    engine = _tensorrt(tensorrt)
    trt = engine.module
    logger = _capturing_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log(f"[tensorrt] parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        raise BuildError(
            f"{onnx_path}: TensorRT's ONNX parser ({engine.flavour} {engine.version}) failed:\n{_parse_errors(parser)}"
        )
    summary = network_summary(trt, network)
    if precision == "fp8" and not summary["fp8_matrix_multiplies"]:
        raise BuildError(f"{onnx_path}: {qdq} FP8 Q/DQ nodes, but no matrix multiply reads two FP8-dequantized inputs")

    config = builder.create_builder_config()
    try:
        engine.target(config, compute_capability)
    except flavours.TensorRTMissing as e:
        raise BuildError(str(e)) from e
    flag_names = ["REFIT"] if refittable else []
    for name in flag_names:
        config.set_flag(getattr(trt.BuilderFlag, name))
    config.builder_optimization_level = optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names and types in the plan and the log
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    if engine.timing_cache:
        cached = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        cache = config.create_timing_cache(cached)
        # ignore_mismatch=False: never reuse another GPU's timings (nor an unreadable cache of another TensorRT).
        if cache is None or not config.set_timing_cache(cache, False):
            log(f"[tensorrt] {timing_cache_path} was made on another GPU or TensorRT: starting an empty timing cache")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
    monitor = _progress_monitor(trt, _ProgressPrinter(log))
    config.progress_monitor = monitor  # the config keeps it alive; `monitor` too, until the build returns

    log(
        f"[tensorrt] building {out_path.name}: {precision} ({weights} weights), sm{compute_capability}, "
        f"flags {flag_names or ['none']}, level {optimization_level}"
    )
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        why = "\n".join(logger.errors) or "(no error logged)"
        hint = engine.refit_problem() if refittable else None
        raise BuildError(
            f"{onnx_path}: TensorRT ({engine.flavour} {engine.version}) could not build a plan:\n{why}"
            + (f"\n{hint}" if hint else "")
        )
    size = write_atomic(out_path, memoryview(serialized))
    if engine.timing_cache:
        write_atomic(timing_cache_path, memoryview(config.get_timing_cache().serialize()))
    log(f"[tensorrt] {out_path} built in {seconds:.1f}s, {size / 1e6:.1f} MB")
    return {
        "tensorrt": {"flavour": engine.flavour, "version": engine.version},
        "compute_capability": compute_capability,
        "precision": precision,
        "weights": weights,
        "profiles": _json_profiles(profiles),
        "io_types": dict(io_types or {}),
        "flags": {
            "builder_flags": flag_names,
            "optimization_level": optimization_level,
            "strongly_typed": True,
            "workspace_gb": workspace_gb,
            "timing_cache": engine.timing_cache,
        },
        "network": summary,
        "engine_layers": gemm_precisions(logger.layers),
        "fp8_qdq_nodes": qdq,
        "seconds": round(seconds, 2),
        "bytes": size,
    }


# --- refit ----------------------------------------------------------------------------------------------------------


def refit_set(
    refittable_names: Iterable[str], base: Mapping[str, Any], weights: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """What to hand the refitter: every refittable weight, from `weights` where given, else from `base`.

    Setting every weight, not only those the new LoRA touches, is what keeps A -> B -> A exact: a weight that A
    changed and B does not would otherwise keep A's value (design.md: refitting A->B->A blends weights). `weights`
    must therefore be complete values (base + this LoRA's delta), never deltas on top of the engine's current state.
    """
    names = list(refittable_names)
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise BuildError(f"not refittable weights of this engine (built without REFIT, or renamed): {unknown[:5]}")
    missing = [n for n in names if n not in weights and n not in base]
    if missing:
        raise BuildError(f"{len(missing)} refittable weights have neither a new nor a base value: {missing[:5]}")
    return {n: weights[n] if n in weights else base[n] for n in names}


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16, C order), rounded to nearest even as torch rounds; NaN stays NaN."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded).astype(np.uint16)


class _OnnxInitializers(Mapping[str, np.ndarray]):
    """The base weights of an exported graph by initializer name, each read when asked for (with its external
    data), so a 12B model's weights are not all read just to be looked up."""

    def __init__(self, onnx_path: Path) -> None:
        self._dir = str(Path(onnx_path).parent)
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        self._tensors = {t.name: t for t in graph.initializer}

    def __getitem__(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self._tensors[name], base_dir=self._dir)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def refit_engine(
    engine_path: Path,
    weights: Mapping[str, np.ndarray],
    *,
    base_onnx: Path | None = None,
    out_path: Path | None = None,
    log: Log = print,
) -> dict:
    """Refit a REFIT-built plan and write it back (to `out_path`, default in place); returns a small record.

    Always from the base weights: every refittable weight is set, from `weights` (complete new values by ONNX
    initializer name, e.g. base + a LoRA delta) or else from `base_onnx`'s initializers (the graph the plan was
    built from). Without `base_onnx`, `weights` must cover every refittable weight. See refit_set for why.
    """
    engine_path = Path(engine_path)
    base: Mapping[str, Any] = _OnnxInitializers(base_onnx) if base_onnx is not None else {}
    trt = _tensorrt(None).module
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise BuildError(f"{engine_path}: TensorRT could not load the plan (another TensorRT or GPU?)")
    refitter = trt.Refitter(engine, logger)
    t0 = time.perf_counter()
    chosen = refit_set(refitter.get_all_weights(), base, weights)
    keep = []  # set_named_weights reads these buffers until refit_cuda_engine returns
    for name, value in chosen.items():
        proto = refitter.get_weights_prototype(name)
        if proto.dtype == trt.bfloat16:  # numpy has no bfloat16: hand TensorRT the bits by pointer
            array = bf16_bits(np.asarray(value, dtype=np.float32))
            weights_of = trt.Weights(trt.bfloat16, array.ctypes.data, array.size)
        else:
            array = np.ascontiguousarray(np.asarray(value), dtype=trt.nptype(proto.dtype))
            weights_of = trt.Weights(array)
        if array.size != proto.size:
            raise BuildError(f"refit {name}: {array.size} values, the engine holds {proto.size}")
        keep.append(array)
        if not refitter.set_named_weights(name, weights_of):
            raise BuildError(f"refit {name}: rejected by TensorRT")
    missing = refitter.get_missing_weights()
    if missing:
        raise BuildError(f"refit: TensorRT still misses weights {list(missing)[:5]}")
    if not refitter.refit_cuda_engine():
        raise BuildError(f"{engine_path}: refit failed (TensorRT's log above says why)")
    target = Path(out_path) if out_path is not None else engine_path
    size = write_atomic(target, memoryview(engine.serialize()))
    seconds = time.perf_counter() - t0
    log(f"[tensorrt] refitted {len(chosen)} weights ({len(weights)} new) into {target} in {seconds:.1f}s")
    return {"refitted": len(chosen), "new": len(weights), "seconds": round(seconds, 2), "bytes": size}


# --- a family's plans -----------------------------------------------------------------------------------------------

Builder = Callable[..., dict]  # build_engine's signature; tests inject a fake


@dataclass(frozen=True)
class _Job:
    component: Component
    onnx: Path
    onnx_entry: dict
    precision: str
    profiles: Profiles
    flags: dict


@dataclass(frozen=True)
class Fp8Inputs:
    """What an "fp8" component's Q/DQ graph is made from besides its export (export/fp8_qdq.py): the checkpoint
    folders whose pipeline is run for calibration, the LoRA files merged components need, the calibration settings
    (None: fp8_qdq.Calibration's defaults) and where the Q/DQ graphs go (None: <onnx_dir>/fp8_qdq)."""

    checkpoint_dirs: Mapping[str, Path]
    loras: Mapping[str, Path] | None = None
    calibration: Any = None  # fp8_qdq.Calibration; Any keeps torch out of this module's imports
    qdq_dir: Path | None = None


# The export each precision's plan is built from (fp8: the Q/DQ graph is written from this one).
GRAPH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp8": "bfloat16"}


def _fp8_graph(component: Component, fam: Family, onnx_dir: Path, fp8: Fp8Inputs, log: Log) -> tuple[Path, dict]:
    """The component's FP8 Q/DQ graph (from its BF16 export) and its manifest entry, calibrated and written when
    stale."""
    from . import fp8_qdq  # torch and diffusers: only when an FP8 plan is asked for

    path, entry, _ = fp8_qdq.build_qdq_onnx(
        component,
        fam,
        mf.graph_dir(onnx_dir, GRAPH_DTYPES["fp8"]),
        fp8.checkpoint_dirs,
        qdq_dir=fp8.qdq_dir if fp8.qdq_dir is not None else onnx_dir / fp8_qdq.QDQ_DIR,
        loras=fp8.loras,
        calibration=fp8.calibration,
        log=lambda m: log(f"[fp8_qdq] {m}"),
    )
    require_fp8_qdq(path)
    return path, entry


def _jobs(
    fam: Family,
    onnx_dir: Path,
    names: Sequence[str],
    precisions: Mapping[str, str],
    optimization_level: int,
    workspace_gb: float | None,
    refit: bool,
    fp8: Fp8Inputs | None = None,
    log: Log = print,
) -> list[_Job]:
    """Everything decided before any build (graphs, profiles, flags, FP8 preconditions), so a mistake in the fifth
    component fails before the first one spends minutes building. FP8 components then get their Q/DQ graph
    (calibrated when stale), which their plan is built from."""
    by_name = {c.triton_model: c for c in fam.components}
    jobs = []
    for name in names:
        if name not in by_name:
            raise ValueError(f"{name!r} is no component of family {fam.name}: {sorted(by_name)}")
        component = by_name[name]
        precision = precisions.get(name, component.precision)
        if precision not in PRECISIONS:
            raise ValueError(f"{name}: precision {precision!r}: expected one of {PRECISIONS}")
        if precision == "fp8":
            if not component.fp8_layers:
                raise BuildError(f"{name}: precision 'fp8' needs registry fp8_layers (which linears run in FP8)")
            if fp8 is None or not any(k in fp8.checkpoint_dirs for k in component.checkpoints):
                raise BuildError(
                    f"{name}: precision 'fp8' builds from an FP8 Q/DQ graph whose activation scales are calibrated "
                    f"by running the pipeline: pass fp8=Fp8Inputs(checkpoint_dirs=...) with one of "
                    f"{list(component.checkpoints)}, or build 'bf16'"
                )
        dtype = GRAPH_DTYPES[precision]
        graphs = mf.graph_dir(onnx_dir, dtype)
        entry = mf.load(graphs)["models"].get(name)
        onnx_path = graphs / name / "model.onnx"
        if entry is None or not onnx_path.is_file():
            raise BuildError(
                f"{name}: {precision} plans are built from the {dtype} export and there is none in {graphs} "
                f"(export it: export_family(..., dtype={dtype!r}); components that run in torch on every profile "
                "have none)"
            )
        flags = {
            "refittable": refit and refittable(component, fam),
            "optimization_level": optimization_level,
            "workspace_gb": workspace_gb,
            "io_types": plan_io_types(component, precision),
        }
        profiles = input_profiles(component, fam, onnx_path)
        jobs.append(_Job(component, onnx_path, entry, precision, profiles, flags))
    for i, job in enumerate(jobs):
        if job.precision == "fp8" and fp8 is not None:  # (fp8 is never None here: checked above)
            # The plan is built from the Q/DQ graph and keyed by it; its inputs and outputs are the export's.
            path, entry = _fp8_graph(job.component, fam, onnx_dir, fp8, log)
            jobs[i] = dataclasses.replace(job, onnx=path, onnx_entry=entry)
    return jobs


def build_family_engines(
    family: str,
    onnx_dir: Path,
    out_dir: Path,
    *,
    capabilities: Sequence[str] | None = None,
    components: Sequence[str] | None = None,
    precisions: Mapping[str, str] | None = None,
    optimization_level: int = 3,
    workspace_gb: float | None = None,
    tensorrt: TensorRT | None = None,
    force: bool = False,
    fp8: Fp8Inputs | None = None,
    refit: bool = True,
    builder: Builder = build_engine,
    log: Log = print,
) -> dict:
    """Build the stale plans of `family` into `out_dir/<triton_model>/1/<plan_filename>`, recorded in
    `out_dir/manifest.json`, sharing one timing cache `out_dir/timing.cache`.

    components: which to build; default, those whose registry GPU backend is "tensorrt" — none today (the GPU
    profile runs torch), so name them to build any. precisions: triton model -> "fp32" | "bf16" | "fp8", overriding
    the registry's Component.precision (the transformers say "fp8", the rest "bf16"). Each plan is built from the
    export of its precision in `onnx_dir` (GRAPH_DTYPES: fp32 the FP32 export, bf16 the BF16 export in bf16/);
    an "fp8" plan from the component's FP8 Q/DQ graph (export/fp8_qdq.py: the registry's fp8_layers, activation
    scales calibrated by running the stock pipeline of `fp8.checkpoint_dirs`), written from the BF16 export to
    <onnx_dir>/fp8_qdq when stale; without `fp8` an "fp8" component is refused before anything is built. Triton's
    GPU config declares the registry precision's I/O types (plan_io_types), so an overridden precision builds a plan
    to measure, not to serve. capabilities: the compute capabilities to build for; default this GPU's with the
    datacenter TensorRT (it builds only for the GPU it runs on); TensorRT for RTX needs them named. tensorrt: which
    TensorRT builds (default: the installed one). A plan is rebuilt when its key (plan_key: graph, precision,
    profiles, flags, TensorRT flavour and version, compute capability) changed or its file is not the one recorded;
    one plan per compute capability is kept (a TensorRT upgrade replaces the old version's file). refit=False
    builds every plan without REFIT (TensorRT for RTX cannot build refittable plans without a GPU:
    TensorRT.refit_problem); otherwise the components LoRA weights reach are refittable (`refittable`).

    Returns the manifest plus `last_run`: triton model -> compute capability -> "built" | "unchanged".
    """
    fam = FAMILIES[family]
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    if components is None:
        components = [c.triton_model for c in fam.components if c.backend("gpu") == "tensorrt"]
        if not components:
            log(
                f"[tensorrt] {family}: no component has GPU backend 'tensorrt' in the registry; nothing to build "
                "(pass components=[...] to build some anyway)"
            )
    jobs = _jobs(fam, onnx_dir, components, precisions or {}, optimization_level, workspace_gb, refit, fp8, log)
    if not jobs:
        return {**mf.load(out_dir), "last_run": {}}
    engine = _tensorrt(tensorrt)
    if capabilities is None:
        if engine.builds_without_gpu:
            raise BuildError(
                f"TensorRT for RTX builds ahead of time for a named GPU: pass capabilities from "
                f"{list(engine.compute_capabilities())}"
            )
        capabilities = engine.compute_capabilities()
    ccs = list(capabilities)
    manifest = mf.load(out_dir)
    timing_cache = out_dir / TIMING_CACHE
    last_run: dict[str, dict[str, str]] = {}
    for job in jobs:
        name = job.component.triton_model
        gaps = narrower_than_family(job.component, fam)
        if gaps:
            log(
                f"[tensorrt] {name}: profile narrower than family {family}'s limits (dim: profile max, family max) "
                f"{gaps}; requests beyond it fail in this engine"
            )
        record = manifest["models"].setdefault(name, {"family": family, "plans": {}})
        for cc in ccs:
            filename = plan_filename(engine.flavour, engine.version, cc)
            plan = out_dir / name / PLAN_VERSION / filename
            key = plan_key(
                onnx_entry=job.onnx_entry,
                precision=job.precision,
                profiles=job.profiles,
                flags=job.flags,
                tensorrt=f"{engine.flavour}{engine.version}",
                compute_capability=cc,
            )
            entry = record["plans"].get(cc)
            if not force and mf.is_fresh(entry, key, plan):
                log(f"[tensorrt] {name} {filename}: unchanged, skipped")
                last_run.setdefault(name, {})[cc] = UNCHANGED
                continue
            result = builder(
                job.onnx,
                plan,
                job.profiles,
                precision=job.precision,
                timing_cache_path=timing_cache,
                compute_capability=cc,
                optimization_level=job.flags["optimization_level"],
                refittable=job.flags["refittable"],
                workspace_gb=job.flags["workspace_gb"],
                io_types=job.flags["io_types"],
                tensorrt=engine,
                log=log,
            )
            if entry and entry.get("file") != filename:  # one plan per GPU: the old TensorRT's plan goes
                (out_dir / name / PLAN_VERSION / entry["file"]).unlink(missing_ok=True)
            record["plans"][cc] = {
                **result,
                "key": key,
                "file": filename,
                "sha256": file_sha256(plan),
                "onnx": str(job.onnx.relative_to(onnx_dir)),
                "onnx_sha256": job.onnx_entry["sha256"],
                "export_key": job.onnx_entry.get("key"),
                "refittable": job.flags["refittable"],
                "narrower_than_family": {k: list(v) for k, v in gaps.items()},
            }
            mf.save(out_dir, manifest)
            last_run.setdefault(name, {})[cc] = BUILT
    return {**manifest, "last_run": last_run}
