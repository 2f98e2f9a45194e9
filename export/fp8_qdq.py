"""FP8 explicit quantization for TensorRT: an exported component graph (BF16 for plans, FP32 where ONNX Runtime
checks it) -> the same graph with every FP8 layer's
GEMM behind FP8 (E4M3FN) QuantizeLinear/DequantizeLinear nodes, the form TensorRT 10's ONNX parser fuses into FP8
GEMMs. TensorRT never picks FP8 by itself (tensorrt_build.require_fp8_qdq); this module writes what it needs.

Which layers: the registry's Component.fp8_layers through the torch path's own rule
(components.fp8.fp8_layer_names: Linear, matched, in use, in/out features multiples of 16), so the
torch GPU path and the TensorRT plan quantize the same linears.

The graph, per selected Linear (y = x W^T + b, exported by torch's dynamo exporter as W -> Transpose -> MatMul, or
Gemm(transB=1) for 2-D inputs):

    x ──QuantizeLinear(s_x, zp=FP8 0)──DequantizeLinear──┐
    W ──Transpose──QuantizeLinear(s_w[N], axis)──DequantizeLinear──MatMul──Add(b)

  - activations: one static per-tensor scale s_x = amax / 448, amax = the largest |x| this Linear saw while the
    stock diffusers pipeline denoised the calibration prompts (forward pre-hooks). Plain max, no percentile: E4M3's
    range is wide enough for the outliers that percentiles clip for INT8, and clipping diffusion outliers costs
    more than the rounding it saves; saturate=1 (the default) clamps anything beyond at run time.
  - weights: one scale per output channel, s_w = amax(|W| over the row) / 448, from the weights themselves.
  - scales in the graph's float type (BF16 or FP32): a DequantizeLinear outputs its scale's type.
  - weights stay the export's initializers behind Q -> DQ (TensorRT quantizes them at build), rather than FP8
    initializers behind a DQ: the initializer names and values stay the export's, so LoRA refit by name (tensorrt_build.
    refit_engine, always from base weights) keeps working and TensorRT re-quantizes refitted weights; and the
    weights file is shared with the FP32 export by a hard link instead of a second copy. The cost, a file four
    times the FP8 size, is paid on the build machine only (the plan holds FP8 weights).
  - Q/DQ sit directly on both GEMM inputs, so the fusion needs no Q/DQ propagation across the Transpose.
  - opset 19, the first with FP8 Q/DQ; the export's opset-18 ops are unchanged in 19 for the types they use.

The result lives in `<onnx_dir>/fp8_qdq/<triton_model>/model.onnx` with its own manifest, keyed by what it depends
on (source graph and its export key, the calibration checkpoint's content, calibration settings, layer pattern,
this module's version), so it is rebuilt only when one of those changes. tensorrt_build builds an "fp8"
component's plan from it; the CPU profile keeps serving the FP32 graph with ONNX Runtime.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from artifacts import file_sha256, folder_hash, place_file, staged_folder
from components.adapters import INITIALIZER_PREFIX
from components.fp8 import E4M3_MAX, fp8_layer_names
from components.lora_merge import merge_lora
from registry import CHECKPOINTS, LORAS, ROUTES, TASKS, Component, Family

from . import manifest as mf
from .family import with_merged_lora
from .onnx_export import ExportError

QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take FLOAT8 types from opset 19
QDQ_VERSION = 1  # bump when this module changes what it writes (part of every Q/DQ graph's key)
QDQ_DIR = "fp8_qdq"  # under the export folder: <onnx_dir>/fp8_qdq/<triton_model>/model.onnx + manifest.json
MIN_AMAX = 1e-12  # a layer that only ever saw zeros still gets a finite scale

# last_run values
BUILT, UNCHANGED = "built", "unchanged"

Log = Callable[[str], None]

# Varied subjects, styles and text in the image: what the served routes get, not one kind of picture.
DEFAULT_PROMPTS = (
    "a red fox in fresh snow at dawn, telephoto photograph",
    "an isometric illustration of a busy harbour city at night, neon signs",
    "close-up portrait of an elderly fisherman, natural light, 85mm",
    "a bowl of ramen on a wooden table, food photography, steam",
    "a poster with the words 'GRAND OPENING' in bold red letters",
    "watercolor painting of a mountain lake with a small wooden cabin",
    "a futuristic sports car in a white studio, product shot",
    "a child's crayon drawing of a family and a dog under a yellow sun",
)


class QdqError(ExportError):
    pass


def _log(message: str) -> None:
    print(f"[fp8_qdq] {message}", flush=True)


@dataclass(frozen=True)
class Calibration:
    """What the activation scales are measured on: the stock pipeline run on `prompts`, `steps` denoising steps each,
    at width x height. None takes the default route's value for the component's checkpoint (its steps, size and cfg),
    so calibration sees the inputs the transformer sees when served."""

    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    cfg: float | None = None
    seed: int = 0

    def resolved(self, checkpoint: str) -> Calibration:
        route = next((r for r in ROUTES.values() if r.checkpoint == checkpoint), None)
        if route is None:
            raise QdqError(f"checkpoint {checkpoint!r} has no route to take calibration defaults from")
        if not self.prompts:
            raise QdqError("calibration needs at least one prompt")
        return replace(
            self,
            steps=self.steps or route.steps,
            width=self.width or route.width,
            height=self.height or route.height,
            cfg=route.cfg if self.cfg is None else self.cfg,
        )


# --- calibration ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def recording_amax(module: torch.nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, forward pre-hooks keep max |input| of each named Linear (a 0-d float32 tensor on the module's
    device: no host sync per call). Layers never called stay absent."""
    amax: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: torch.nn.Module, args: tuple) -> None:
            seen = args[0].detach().abs().amax().float()
            amax[name] = torch.maximum(amax[name], seen) if name in amax else seen

        return hook

    handles = [module.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in layers]
    try:
        yield amax
    finally:
        for handle in handles:
            handle.remove()


def collect_amax(module: torch.nn.Module, layers: Sequence[str], run: Callable[[], object]) -> dict[str, float]:
    """max |input| per layer over everything `run()` feeds `module`; QdqError names any layer it never reached."""
    with torch.no_grad(), recording_amax(module, layers) as amax:
        run()
    missing = [name for name in layers if name not in amax]
    if missing:
        raise QdqError(f"calibration never called {len(missing)} selected layers, e.g. {missing[:3]}")
    values = {name: float(amax[name]) for name in layers}
    bad = [name for name, v in values.items() if not np.isfinite(v)]
    if bad:
        raise QdqError(f"non-finite activations during calibration in {bad[:3]}")
    return values


def _load_pipeline(family: Family, checkpoint_dir: Path, checkpoint: str, dtype: torch.dtype, device: str) -> Any:
    import diffusers

    pipe = getattr(diffusers, family.pipeline_class).from_pretrained(checkpoint_dir, dtype=dtype)
    overrides = dict(CHECKPOINTS[checkpoint].scheduler_overrides)
    if overrides:  # the sampler the route serves with (e.g. Lightning's), as model_repository/pipelines.py sets it
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def calibrate(
    component: Component,
    family: Family,
    checkpoint_dir: Path,
    checkpoint: str,
    settings: Calibration,
    *,
    lora_file: Path | None = None,
    device: str | None = None,
    log: Log = _log,
) -> dict[str, float]:
    """Run the family's stock diffusers pipeline from `checkpoint_dir` over the calibration prompts, hooks on the
    component's FP8 layers. Returns the activation amax per layer, in named_modules order.

    The component's module is the pipeline's own (`pipe.<role>`, a merged LoRA fused in as the export does), so the
    layers are named as in the exported graph minus the adapter prefix."""
    media = [f.name for f in TASKS[family.pipelines[0].task].media if f.required]
    if media:
        raise QdqError(
            f"{component.triton_model}: calibration runs pipelines on prompts only; {family.pipeline_class} needs "
            f"{', '.join(media)}, which no calibration set provides yet"
        )
    settings = settings.resolved(checkpoint)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32  # as served on each
    t0 = time.perf_counter()
    pipe = _load_pipeline(family, checkpoint_dir, checkpoint, dtype, device)
    module = getattr(pipe, component.role)
    if lora_file is not None:
        merge_lora(module, lora_file, family.pipeline_class, LORAS[component.merged_lora].scale)
    layers = fp8_layer_names(module, component.fp8_layers)
    if not layers:
        raise QdqError(f"{component.triton_model}: fp8_layers {component.fp8_layers!r} selects no Linear")
    log(
        f"{component.triton_model}: calibrating {len(layers)} layers on {len(settings.prompts)} prompts x "
        f"{settings.steps} steps at {settings.width}x{settings.height} ({device}, {dtype})"
    )
    extra = CHECKPOINTS[checkpoint].guidance_kwargs(settings.cfg, "")  # the route's cfg as served

    def run() -> None:
        for i, prompt in enumerate(settings.prompts):
            pipe(
                prompt=prompt,
                num_inference_steps=settings.steps,
                width=settings.width,
                height=settings.height,
                generator=torch.Generator("cpu").manual_seed(settings.seed + i),
                output_type="latent",  # the VAE does not feed the transformer: skip decoding
                **extra,
            )

    amax = collect_amax(module, layers, run)
    log(f"{component.triton_model}: calibrated in {time.perf_counter() - t0:.1f}s")
    return amax


# --- the graph ------------------------------------------------------------------------------------------------------


def weight_scales(weight: np.ndarray) -> np.ndarray:
    """One scale per output channel (row of torch's [out, in] weight): amax / 448, in the weight's own dtype (a
    DequantizeLinear's output has its scale's type, which must be the graph's: FP32 or BF16)."""
    amax = np.abs(weight.astype(np.float32)).max(axis=1)
    return (np.maximum(amax, MIN_AMAX) / E4M3_MAX).astype(weight.dtype)


def activation_scale(amax: float, dtype: type | np.dtype = np.float32) -> np.ndarray:
    return np.array(max(amax, MIN_AMAX) / E4M3_MAX, dtype=np.float32).astype(dtype)


@dataclass(frozen=True)
class GemmSite:
    """Where one Linear's GEMM consumes its weight: `node` (MatMul or Gemm) at position `index` in the graph,
    `weight_input` the value it reads as weight, `axis` that value's output-channel axis."""

    node: onnx.NodeProto
    index: int
    weight_input: str
    axis: int


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[int, onnx.NodeProto]]]:
    users: dict[str, list[tuple[int, onnx.NodeProto]]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            users.setdefault(name, []).append((i, node))
    return users


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scopes(node: onnx.NodeProto) -> list[str] | None:
    """The module scopes torch's exporter records on each node (metadata 'pkg.torch.onnx.name_scopes')."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            with contextlib.suppress(ValueError, SyntaxError):
                return list(ast.literal_eval(prop.value))
    return None


def absent_layers(graph: onnx.GraphProto, layers: Sequence[str], prefix: str = INITIALIZER_PREFIX) -> list[str]:
    """The layers the exporter dropped as dead code: no weight initializer and no node in the module's scope.

    A dual-stream transformer's last block can compute a text-stream output that nothing reads (only the image
    stream reaches proj_out): its text-stream output projection and MLP run in torch but are not in the graph. A
    layer whose weight is missing while nodes of its scope remain was renamed or rewritten instead: QdqError, as for
    a graph without the scope metadata that tells the two apart."""
    inits = {t.name for t in graph.initializer}
    missing = [layer for layer in layers if f"{prefix}{layer}.weight" not in inits]
    if not missing:
        return []
    scoped: set[str] = set()
    for node in graph.node:
        scoped.update(_scopes(node) or ())
    if not scoped:
        raise QdqError(f"{missing[0]}: no initializer {prefix}{missing[0]}.weight, and no module scopes to tell why")
    renamed = [layer for layer in missing if f"{prefix}{layer}" in scoped]
    if renamed:
        raise QdqError(
            f"{renamed[0]}: nodes of its module are in the graph but no initializer {prefix}{renamed[0]}.weight"
        )
    return missing


def find_gemms(graph: onnx.GraphProto, layers: Sequence[str], prefix: str = INITIALIZER_PREFIX) -> dict[str, list]:
    """layer -> its GemmSites, found from the weight initializer `<prefix><layer>.weight` through Transpose nodes
    to the MatMul/Gemm that reads it as its second input. Where the exporter recorded module scopes, each GEMM must
    sit in the layer's own scope. QdqError for a layer with no weight, no GEMM, or a GEMM of another form."""
    inits = {t.name: t for t in graph.initializer}
    users = _consumers(graph)
    sites: dict[str, list[GemmSite]] = {}
    for layer in layers:
        weight = f"{prefix}{layer}.weight"
        if weight not in inits:
            raise QdqError(f"{layer}: no initializer {weight!r} in the graph (exported without its weight name?)")
        if len(inits[weight].dims) != 2:
            raise QdqError(f"{layer}: {weight} has shape {list(inits[weight].dims)}, not a Linear's [out, in]")
        found: list[GemmSite] = []
        frontier = [(weight, 0)]  # (value, output-channel axis in it)
        while frontier:
            value, axis = frontier.pop()
            for index, node in users.get(value, []):
                if node.op_type == "Transpose":
                    perm = list(_attr(node, "perm", [1, 0]))
                    frontier.append((node.output[0], perm.index(axis)))
                elif node.op_type in ("MatMul", "Gemm") and node.input[1] == value and node.input[0] != value:
                    expected = 1 if node.op_type == "MatMul" or not _attr(node, "transB", 0) else 0
                    if axis != expected or (node.op_type == "Gemm" and _attr(node, "transA", 0)):
                        raise QdqError(f"{layer}: {node.op_type} {node.name} does not compute x W^T")
                    found.append(GemmSite(node, index, value, axis))
                else:
                    raise QdqError(f"{layer}: {weight} reaches a {node.op_type} ({node.name}), not a GEMM")
        if not found:
            raise QdqError(f"{layer}: no MatMul/Gemm reads {weight}")
        for site in found:
            scopes = _scopes(site.node)
            if scopes is not None and f"{prefix}{layer}" not in scopes:
                raise QdqError(f"{layer}: its weight feeds {site.node.name}, which the exporter placed in {scopes}")
        sites[layer] = found
    return sites


def _fp8_zeros(name: str, shape: Sequence[int]) -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(shape), [0.0] * int(np.prod(shape, dtype=int)))


def insert_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    base_dir: Path | None = None,
    prefix: str = INITIALIZER_PREFIX,
) -> dict[str, Any]:
    """Put FP8 Q/DQ on both inputs of every GEMM of the layers in `amax`, in place; raise the opset to 19.
    Weight scales come from the graph's own weights (external ones read from `base_dir`, one layer at a time), the
    exact FP32 values TensorRT will quantize. Layers the exporter dropped as dead code (absent_layers) are skipped.
    Returns counts and the skipped layers."""
    graph = model.graph
    absent = absent_layers(graph, list(amax), prefix)
    present = [layer for layer in amax if layer not in absent]
    if not present:
        raise QdqError(f"none of the {len(amax)} selected layers is in the graph")
    sites = find_gemms(graph, present, prefix)
    inits = {t.name: t for t in graph.initializer}
    new_inits: list[TensorProto] = [_fp8_zeros("fp8_qdq.zero_point", [])]
    inserts: list[tuple[int, list[onnx.NodeProto]]] = []
    gemms = 0
    for layer, layer_sites in sites.items():
        weight = numpy_helper.to_array(inits[f"{prefix}{layer}.weight"], base_dir=str(base_dir or ""))
        base = f"fp8_qdq.{layer}"
        new_inits += [
            numpy_helper.from_array(activation_scale(amax[layer], weight.dtype), f"{base}.input_scale"),
            numpy_helper.from_array(weight_scales(weight), f"{base}.weight_scale"),
            _fp8_zeros(f"{base}.weight_zero_point", [weight.shape[0]]),
        ]
        for k, site in enumerate(layer_sites):
            tag = f"{base}.{k}"
            x, w, node = site.node.input[0], site.weight_input, site.node
            nodes = [
                helper.make_node(
                    "QuantizeLinear", [x, f"{base}.input_scale", "fp8_qdq.zero_point"], [f"{tag}.x_q"], f"{tag}/x_q"
                ),
                helper.make_node(
                    "DequantizeLinear",
                    [f"{tag}.x_q", f"{base}.input_scale", "fp8_qdq.zero_point"],
                    [f"{tag}.x_dq"],
                    f"{tag}/x_dq",
                ),
                helper.make_node(
                    "QuantizeLinear",
                    [w, f"{base}.weight_scale", f"{base}.weight_zero_point"],
                    [f"{tag}.w_q"],
                    f"{tag}/w_q",
                    axis=site.axis,
                ),
                helper.make_node(
                    "DequantizeLinear",
                    [f"{tag}.w_q", f"{base}.weight_scale", f"{base}.weight_zero_point"],
                    [f"{tag}.w_dq"],
                    f"{tag}/w_dq",
                    axis=site.axis,
                ),
            ]
            node.input[0], node.input[1] = f"{tag}.x_dq", f"{tag}.w_dq"
            inserts.append((site.index, nodes))
            gemms += 1
    # Right before each GEMM: its inputs (the activation, the transposed weight) are computed earlier already.
    for index, nodes in sorted(inserts, key=lambda item: item[0], reverse=True):
        for node in reversed(nodes):
            graph.node.insert(index, node)
    graph.initializer.extend(new_inits)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < QDQ_OPSET:
            opset.version = QDQ_OPSET
    return {"layers": len(sites), "gemms": gemms, "qdq_nodes": 4 * gemms, "absent": absent}


def write_qdq_onnx(source: Path, dest: Path, amax: Mapping[str, float]) -> dict[str, Any]:
    """`source` (an export/ graph, weights inline or beside it) -> `dest` with FP8 Q/DQ on the layers of `amax`.
    External weight files are linked beside `dest` under their own names, so the references in the graph hold."""
    source, dest = Path(source), Path(dest)
    model = onnx.load(str(source), load_external_data=False)
    counts = insert_qdq(model, amax, source.parent)
    locations = {
        entry.value
        for t in model.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    for location in locations:
        place_file(source.parent / location, dest.parent / location)  # shared with the export, not copied
    onnx.save(model, str(dest))
    onnx.checker.check_model(str(dest), full_check=True)  # types and shapes of every new node, FP8 included
    return counts


# --- build when stale -----------------------------------------------------------------------------------------------


def qdq_path(qdq_dir: Path, component: Component) -> Path:
    return Path(qdq_dir) / component.triton_model / "model.onnx"


def qdq_key(source_entry: Mapping[str, Any], checkpoint_content: str, settings: Calibration, fp8_layers: str) -> str:
    """Everything the Q/DQ graph depends on. The source graph enters by its sha256 and export key (new weights of
    the same shapes keep the graph's hash; the key moves); the calibration checkpoint by its content hash (its text
    encoders and scheduler shape the transformer's inputs too)."""
    return mf.artifact_key(
        source={"sha256": source_entry["sha256"], "export_key": source_entry.get("key")},
        checkpoint=checkpoint_content,
        calibration=asdict(settings),
        fp8_layers=fp8_layers,
        opset=QDQ_OPSET,
        version=QDQ_VERSION,
    )


def build_qdq_onnx(
    component: Component,
    family: Family,
    onnx_dir: Path,
    checkpoint_dirs: Mapping[str, Path],
    *,
    qdq_dir: Path | None = None,
    loras: Mapping[str, Path] | None = None,
    calibration: Calibration | None = None,
    device: str | None = None,
    force: bool = False,
    log: Log = _log,
) -> tuple[Path, dict, str]:
    """The Q/DQ graph of `component`'s export in `onnx_dir`, built unless the recorded one has the same key.
    Returns (its path, its manifest entry, "built" | "unchanged"). Calibrates on the first of the component's
    checkpoints given in `checkpoint_dirs` (the one export/ exported from)."""
    onnx_dir = Path(onnx_dir)
    qdq_dir = Path(qdq_dir) if qdq_dir is not None else onnx_dir / QDQ_DIR
    name = component.triton_model
    if not component.fp8_layers:
        raise QdqError(f"{name}: no fp8_layers in the registry, nothing to quantize")
    source = onnx_dir / name / "model.onnx"
    source_entry = mf.load(onnx_dir)["models"].get(name)
    if source_entry is None or not source.is_file():
        raise QdqError(f"{name}: no exported ONNX in {onnx_dir} (run `python -m export` first)")
    present = [k for k in component.checkpoints if k in checkpoint_dirs]
    if not present:
        raise QdqError(f"{name}: calibration runs its pipeline, and none of {list(component.checkpoints)} was given")
    checkpoint, checkpoint_dir = present[0], Path(checkpoint_dirs[present[0]])
    lora_file, content = with_merged_lora(component, folder_hash(checkpoint_dir), loras)
    settings = (calibration or Calibration()).resolved(checkpoint)
    key = qdq_key(source_entry, content, settings, component.fp8_layers)
    out = qdq_path(qdq_dir, component)
    manifest = mf.load(qdq_dir)
    entry = manifest["models"].get(name)
    if not force and mf.is_fresh(entry, key, out) and mf.files_fresh(entry, out.parent):
        log(f"{name}: FP8 Q/DQ graph unchanged, skipped")
        return out, entry, UNCHANGED

    amax = calibrate(
        component, family, checkpoint_dir, checkpoint, settings, lora_file=lora_file, device=device, log=log
    )
    gc.collect()  # the pipeline (tens of GB at full size) went with calibrate's frame; free it before writing
    # Written beside the final folder and swapped in: a reader never sees a half-written graph.
    with staged_folder(out.parent) as staging:
        counts = write_qdq_onnx(source, staging / "model.onnx", amax)
    entry = {
        "key": key,
        "family": family.name,
        "source": {"sha256": source_entry["sha256"], "export_key": source_entry.get("key")},
        "checkpoint": checkpoint,
        "content_hash": content,
        "calibration": asdict(settings),
        "fp8_layers": component.fp8_layers,
        "opset": QDQ_OPSET,
        "version": QDQ_VERSION,
        **counts,
        "activation_amax": amax,
        "sha256": file_sha256(out),
        "files": mf.other_files(out.parent, out.name),
    }
    manifest["models"][name] = entry
    mf.save(qdq_dir, manifest)
    dropped = f" ({len(counts['absent'])} selected layers not in the graph: dead code)" if counts["absent"] else ""
    log(
        f"{name}: FP8 Q/DQ graph written to {out}: {counts['layers']} layers, {counts['qdq_nodes']} Q/DQ nodes{dropped}"
    )
    return out, entry, BUILT
