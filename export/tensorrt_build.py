"""Exported ONNX components → TensorRT plans, with min/opt/max profiles from the registry, one shared timing cache
and a manifest, so a model, precision, profile, TensorRT or GPU change rebuilds exactly the plans it affects.

TensorRT cannot be installed on the machines that develop this stack (design.md): `tensorrt` is imported lazily,
only by the functions that need it (`build_engine`, `refit_engine`, `tensorrt_version`). Everything around them —
profiles, plan names, the FP8 preconditions, the checks of profiles against the graph, the manifest's stale/fresh
decisions — is plain Python and ONNX, tested on the CPU; `build_family_engines` takes its build step as an
argument so tests inject a fake one. An "fp8" component's plan is built from its FP8 Q/DQ graph, which
export/fp8_qdq.py calibrates and writes (when stale) on the way; the FP32 export stays the CPU profile's graph.

Written to TensorRT 10's Python API (`trt.Builder`, `trt.OnnxParser.parse_from_file`, `IBuilderConfig`,
`trt.IProgressMonitor`, `trt.Refitter`). TensorRT 11 removes the weak-typing precision flags (BuilderFlag.BF16):
there a plan needs a strongly typed ONNX graph (`strongly_typed=True`), and `build_engine` says so rather than
building something else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import subprocess
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
from model_repository.plans import PLAN_VERSION, plan_filename
from registry import FAMILIES, Component, Dim, Family

from . import manifest as mf

Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) shape of one input
Profiles = dict[str, Profile]
Log = Callable[[str], None]

BUILDER_VERSION = 1  # bump when this module changes what a build produces (part of every plan's key)
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


def bf16_io_names(component: Component) -> tuple[str, ...]:
    """The FP32 tensors that travel in BF16 between components on the GPU: model_repository/config.py declares
    them TYPE_BF16 on the gpu profile (FP32 and not `exact`), so the plan's I/O must be BF16 too or Triton will
    not load it. Mirrors that rule; change both together."""
    return tuple(s.name for s in (*component.inputs, *component.outputs) if s.dtype == "FP32" and not s.exact)


def _json_profiles(profiles: Mapping[str, Profile]) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in p] for name, p in profiles.items()}


def plan_key(
    *,
    onnx_entry: Mapping[str, Any],
    precision: str,
    profiles: Mapping[str, Profile],
    flags: Mapping[str, Any],
    trt_version: str,
    compute_capability: str,
) -> str:
    """Everything a plan depends on. The ONNX enters by the export manifest's sha256 of model.onnx *and* its
    export key: with external weights, model.onnx holds only the graph, so new weights of the same shapes leave its
    sha256 unchanged while the export key (checkpoint content hash, LoRA hash) moves."""
    return mf.artifact_key(
        onnx={"sha256": onnx_entry["sha256"], "export_key": onnx_entry.get("key")},
        precision=precision,
        profiles=_json_profiles(profiles),
        flags=dict(flags),
        tensorrt=trt_version,
        compute_capability=compute_capability,
        builder=BUILDER_VERSION,
    )


# --- TensorRT -------------------------------------------------------------------------------------------------------


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BuildError(
            "the `tensorrt` Python package is not installed: plans are built where it is (the NGC Triton image on "
            "Modal), not on the development machines (design.md)"
        ) from e
    if int(trt.__version__.split(".")[0]) < 10:
        raise BuildError(f"TensorRT {trt.__version__}: this builder needs TensorRT 10 or newer")
    return trt


def tensorrt_version() -> str:
    return _import_tensorrt().__version__


def device_compute_capability(device: int = 0) -> str:
    """'9.0' for an H100: from nvidia-smi (no CUDA context needed), else torch."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device}", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        if re.fullmatch(r"\d+\.\d+", out):
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return f"{major}.{minor}"
    except ImportError:
        pass
    raise BuildError("no CUDA GPU found: a TensorRT plan is built on the GPU model it will run on")


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


def _precision_flags(precision: str, strongly_typed: bool) -> list[str]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if strongly_typed:
        return []  # the graph's own types (BF16 tensors, FP8 Q/DQ) decide; TensorRT rejects precision flags here
    # Weak typing: BF16 lets TensorRT pick BF16 kernels where faster; FP8 comes only from the graph's Q/DQ nodes
    # (BuilderFlag.FP8 only enables FP8 plugin I/O, which these graphs have none of).
    return {"fp32": [], "bf16": ["BF16"], "fp8": ["BF16"]}[precision]


def build_engine(
    onnx_path: Path,
    out_path: Path,
    profiles: Mapping[str, Profile],
    *,
    precision: str = "bf16",
    timing_cache_path: Path,
    optimization_level: int = 3,
    refittable: bool = False,
    workspace_gb: float | None = None,
    strongly_typed: bool = False,
    bf16_io: Sequence[str] = (),
    compute_capability: str | None = None,
    log: Log = print,
) -> dict:
    """Build one plan from `onnx_path` (external weights beside it are read by the parser) into `out_path`.

    precision: "bf16" (default) sets BuilderFlag.BF16: TensorRT may run any layer in BF16 (FP32 where faster or
    unsupported). "fp32" sets no reduced-precision flag (TF32 matmuls, TensorRT's default), for modules BF16 hurts
    (NVIDIA's diffusion demo builds VAEs in FP32). "fp8": TensorRT does not choose FP8 by itself; a layer runs in FP8
    only between FP8 QuantizeLinear/DequantizeLinear nodes that a quantizer put into the ONNX graph (explicit
    quantization: NVIDIA ModelOpt calibrates the scales and leaves sensitive layers unquantized). So "fp8" refuses a
    graph without FP8 Q/DQ (checked on the CPU, before TensorRT loads) and otherwise builds like "bf16", the Q/DQ
    nodes fixing the FP8 layers. `strongly_typed=True` instead builds a strongly typed network (ModelOpt's BF16 +
    FP8 export, as NVIDIA's diffusion demo does, and the only mode TensorRT 11 keeps): no precision flags, types come
    from the graph, and the I/O types too (so no `bf16_io`).

    profiles: input name -> (min, opt, max) shapes, one optimization profile. timing_cache_path: loaded when
    present (a cache from another GPU or TensorRT is dropped, with a log line) and saved back after the build, so
    later builds reuse layer timings. refittable: BuilderFlag.REFIT, weights named by ONNX initializer
    (refit_engine). bf16_io: FP32 graph inputs/outputs declared BF16 at the plan's boundary (bf16_io_names).
    compute_capability: when given, the GPU here must have it (a plan is built for the GPU that builds it).

    Returns the manifest record: tensorrt, compute_capability, precision, profiles, flags, seconds, bytes.
    """
    onnx_path, out_path, timing_cache_path = Path(onnx_path), Path(out_path), Path(timing_cache_path)
    flag_names = _precision_flags(precision, strongly_typed)
    if strongly_typed and bf16_io:
        raise ValueError("a strongly typed network takes its I/O types from the ONNX graph: bf16_io must be empty")
    if not 0 <= optimization_level <= 5:
        raise ValueError(f"builder optimization level {optimization_level}: TensorRT takes 0..5")
    check_profiles(onnx_path, profiles)
    qdq = require_fp8_qdq(onnx_path) if precision == "fp8" else 0
    if refittable:
        flag_names.append("REFIT")

    trt = _import_tensorrt()
    cc = device_compute_capability()
    if compute_capability is not None and compute_capability != cc:
        raise BuildError(
            f"a plan for compute capability {compute_capability} must be built on such a GPU; this is {cc}"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; STRONGLY_TYPED is the one creation flag we may need.
    network = builder.create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    )
    parser = trt.OnnxParser(network, logger)
    log(f"[tensorrt] parsing {onnx_path}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path}: the TensorRT ONNX parser failed:\n{errors}")

    io = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    io.update({network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)})
    for name in bf16_io:
        if name not in io:
            raise BuildError(f"bf16_io names {name!r}, which is no input or output of the network")
        if io[name].dtype != trt.float32:
            raise BuildError(f"bf16_io: {name} is {io[name].dtype} in the network, not FP32")
        io[name].dtype = trt.bfloat16

    config = builder.create_builder_config()
    for name in flag_names:
        if not hasattr(trt.BuilderFlag, name):
            raise BuildError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{name} (weak typing was removed in TensorRT 11): "
                "export a strongly typed graph (BF16 weights, FP8 Q/DQ) and pass strongly_typed=True"
            )
        config.set_flag(getattr(trt.BuilderFlag, name))
    config.builder_optimization_level = optimization_level
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    cached = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(cached)
    # ignore_mismatch=False: never reuse another GPU's timings (nor an unreadable cache of another TensorRT).
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"[tensorrt] {timing_cache_path} was made on another GPU or TensorRT: starting an empty timing cache")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    monitor = _progress_monitor(trt, _ProgressPrinter(log))
    config.progress_monitor = monitor  # the config keeps it alive; `monitor` too, until the build returns

    log(f"[tensorrt] building {out_path.name}: {precision}, flags {flag_names or ['none']}, level {optimization_level}")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        raise BuildError(f"{onnx_path}: TensorRT could not build a plan (its log above says why)")
    size = write_atomic(out_path, memoryview(serialized))
    write_atomic(timing_cache_path, memoryview(config.get_timing_cache().serialize()))
    log(f"[tensorrt] {out_path} built in {seconds:.1f}s, {size / 1e6:.1f} MB")
    return {
        "tensorrt": trt.__version__,
        "compute_capability": cc,
        "precision": precision,
        "profiles": _json_profiles(profiles),
        "flags": {
            "builder_flags": flag_names,
            "optimization_level": optimization_level,
            "strongly_typed": strongly_typed,
            "workspace_gb": workspace_gb,
            "bf16_io": list(bf16_io),
        },
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
    trt = _import_tensorrt()
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


def _fp8_graph(component: Component, fam: Family, onnx_dir: Path, fp8: Fp8Inputs, log: Log) -> tuple[Path, dict]:
    """The component's FP8 Q/DQ graph and its manifest entry, calibrated and written when stale."""
    from . import fp8_qdq  # torch and diffusers: only when an FP8 plan is asked for

    path, entry, _ = fp8_qdq.build_qdq_onnx(
        component,
        fam,
        onnx_dir,
        fp8.checkpoint_dirs,
        qdq_dir=fp8.qdq_dir,
        loras=fp8.loras,
        calibration=fp8.calibration,
        log=lambda m: log(f"[fp8_qdq] {m}"),
    )
    require_fp8_qdq(path)
    return path, entry


def _jobs(
    fam: Family,
    onnx_dir: Path,
    onnx_manifest: dict,
    names: Sequence[str],
    precisions: Mapping[str, str],
    optimization_level: int,
    workspace_gb: float | None,
    fp8: Fp8Inputs | None = None,
    log: Log = print,
) -> list[_Job]:
    """Everything decided before any build (profiles, flags, FP8 preconditions), so a mistake in the fifth
    component fails before the first one spends minutes building. FP8 components then get their Q/DQ graph
    (calibrated when stale), which their plan is built from."""
    by_name = {c.triton_model: c for c in fam.components}
    jobs = []
    for name in names:
        if name not in by_name:
            raise ValueError(f"{name!r} is no component of family {fam.name}: {sorted(by_name)}")
        component = by_name[name]
        entry = onnx_manifest["models"].get(name)
        onnx_path = onnx_dir / name / "model.onnx"
        if entry is None or not onnx_path.is_file():
            raise BuildError(
                f"{name}: no exported ONNX in {onnx_dir} (run `python -m export` first; components "
                "that run in torch on every profile have none)"
            )
        precision = precisions.get(name, component.precision)
        _precision_flags(precision, strongly_typed=False)
        if precision == "fp8":
            if not component.fp8_layers:
                raise BuildError(f"{name}: precision 'fp8' needs registry fp8_layers (which linears run in FP8)")
            if fp8 is None or not any(k in fp8.checkpoint_dirs for k in component.checkpoints):
                raise BuildError(
                    f"{name}: precision 'fp8' builds from an FP8 Q/DQ graph whose activation scales are calibrated "
                    f"by running the pipeline: pass fp8=Fp8Inputs(checkpoint_dirs=...) with one of "
                    f"{list(component.checkpoints)}, or build 'bf16'"
                )
        flags = {
            "refittable": refittable(component, fam),
            "optimization_level": optimization_level,
            "workspace_gb": workspace_gb,
            "strongly_typed": False,
            "bf16_io": list(bf16_io_names(component)),
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
    trt_version: str | None = None,
    force: bool = False,
    fp8: Fp8Inputs | None = None,
    builder: Builder = build_engine,
    log: Log = print,
) -> dict:
    """Build the stale plans of `family` into `out_dir/<triton_model>/1/<plan_filename>`, recorded in
    `out_dir/manifest.json`, sharing one timing cache `out_dir/timing.cache`.

    components: which to build; default, those whose registry GPU backend is "tensorrt" — none today (the GPU
    profile runs torch), so name them to build any. Each needs an exported ONNX in `onnx_dir` (export/ layout and
    manifest). precisions: triton model -> "fp32" | "bf16" | "fp8", overriding the registry's Component.precision
    (the transformers say "fp8"). An "fp8" plan is built from the component's FP8 Q/DQ graph
    (export/fp8_qdq.py: the registry's fp8_layers, activation scales calibrated by running the stock pipeline of
    `fp8.checkpoint_dirs`), written to <onnx_dir>/fp8_qdq when stale; without `fp8` an "fp8" component is refused
    before anything is built. The CPU profile keeps serving the FP32 export. capabilities:
    the compute capabilities to build for, default this GPU's; build_engine builds only for the GPU it runs on.
    trt_version: default the installed TensorRT's. A plan is rebuilt when its key (plan_key: ONNX, precision,
    profiles, flags, TensorRT version, compute capability) changed or its file is not the one recorded; one plan per
    compute capability is kept (a TensorRT upgrade replaces the old version's file). Refittable: see `refittable`.

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
    jobs = _jobs(
        fam, onnx_dir, mf.load(onnx_dir), components, precisions or {}, optimization_level, workspace_gb, fp8, log
    )
    if not jobs:
        return {**mf.load(out_dir), "last_run": {}}
    version = trt_version or tensorrt_version()
    ccs = list(capabilities) if capabilities is not None else [device_compute_capability()]
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
            filename = plan_filename(version, cc)
            plan = out_dir / name / PLAN_VERSION / filename
            key = plan_key(
                onnx_entry=job.onnx_entry,
                precision=job.precision,
                profiles=job.profiles,
                flags=job.flags,
                trt_version=version,
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
                optimization_level=job.flags["optimization_level"],
                refittable=job.flags["refittable"],
                workspace_gb=job.flags["workspace_gb"],
                bf16_io=job.flags["bf16_io"],
                compute_capability=cc,
                log=log,
            )
            if entry and entry.get("file") != filename:  # one plan per GPU: the old TensorRT's plan goes
                (out_dir / name / PLAN_VERSION / entry["file"]).unlink(missing_ok=True)
            record["plans"][cc] = {
                **result,
                "key": key,
                "file": filename,
                "sha256": file_sha256(plan),
                "onnx_sha256": job.onnx_entry["sha256"],
                "export_key": job.onnx_entry.get("key"),
                "refittable": job.flags["refittable"],
                "narrower_than_family": {k: list(v) for k, v in gaps.items()},
            }
            mf.save(out_dir, manifest)
            last_run.setdefault(name, {})[cc] = BUILT
    return {**manifest, "last_run": last_run}
