"""Export one wrapped component to ONNX (torch.export / dynamo), check it, and compare ONNX Runtime with torch."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from components.adapters import Adapter, Shape
from registry import Component, Family

from . import graph_cleanup

OPSET = 18
PARITY_LIMIT = 1e-4  # float32 here; anything larger is a wrong graph, not float noise
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB ceiling: larger models keep weights beside the graph
# What an export depends on besides the weights and the registry (part of every artifact key).
OPTIONS = {"opset": OPSET, "dynamo": True, "optimize": False, "dtype": "float32", "cleanup": "tensorrt-parser"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def options(dtype: str) -> dict:
    """OPTIONS of an export in `dtype` ("float32": the CPU profile's graphs; "bfloat16": TensorRT's bf16/fp8)."""
    if dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r}: expected one of {list(DTYPES)}")
    return {**OPTIONS, "dtype": dtype}


def in_dtype(component: Component, module: torch.nn.Module, example: Sequence[torch.Tensor], dtype: str) -> tuple:
    """`module` and its example inputs in `dtype`: the weights, and every float input that is not `exact` (those
    stay FP32 on every profile: TensorSpec.exact), as the GPU profile feeds them."""
    target = DTYPES[dtype]
    module = module.to(target)
    cast = tuple(
        t.to(target) if t.is_floating_point() and not spec.exact else t
        for spec, t in zip(component.inputs, example, strict=True)
    )
    return module, cast


class ExportError(RuntimeError):
    pass


class ParityError(ExportError):
    pass


def dynamic_shapes(component: Component, family: Family) -> tuple[dict[int, Any], ...]:
    """torch.export dims for every symbolic axis with the registry's range; one Dim object per name, so axes that
    share a name (batch, image_tokens, t5_tokens) are tied together, and a derived dim (Dim.of) is its base's
    multiple."""
    dims: dict[str, Any] = {d.name: torch.export.Dim(d.name, min=d.min, max=d.max) for d in family.dims if not d.of}
    for d in family.dims:
        if d.of:
            base, factor = d.of
            dims[d.name] = factor * dims[base]
    return tuple({axis: dims[d] for axis, d in enumerate(spec.dims) if isinstance(d, str)} for spec in component.inputs)


def _as_arguments(module: torch.nn.Module, shapes: tuple) -> tuple:
    """`shapes` in the structure of the module's forward: trailing inputs that land in its `*args` are one tuple
    to torch.export (a VAE step's caches)."""
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    return shapes if star is None else (*shapes[:star], tuple(shapes[star:]))


def _check_dynamic_inputs(program: torch.onnx.ONNXProgram, component: Component) -> None:
    """Every registry-dynamic input axis is still symbolic in the graph.

    When torch.export specialises a dynamic axis (code that turns a size into a constant), torch.onnx.export does
    not fail: it falls back to a capture that fixes the axis to the traced size. Caught here, by name, instead of as
    a shape error at some other shape."""
    for value, spec in zip(program.model.graph.inputs, component.inputs, strict=True):
        if value.shape is None:
            continue
        for axis, (dim, name) in enumerate(zip(value.shape.dims, spec.dims, strict=True)):
            if isinstance(name, str) and isinstance(dim, int):
                raise ExportError(
                    f"{component.triton_model}: torch.export fixed {spec.name} axis {axis} ({name!r}) to {dim}; "
                    "the traced code turns that size into a constant"
                )


def _name_dims(program: torch.onnx.ONNXProgram, component: Component) -> None:
    """Give input and output axes the registry's names ("height" rather than torch's "8*latent_height"), so the
    graph reads like the registry's TensorSpecs. Labels only: no value or shape changes."""
    import onnx_ir as ir

    graph = program.model.graph
    pairs = (*zip(graph.inputs, component.inputs, strict=True), *zip(graph.outputs, component.outputs, strict=True))
    for value, spec in pairs:
        if value.shape is None:
            continue
        value.shape = ir.Shape(
            [name if isinstance(name, str) else dim for dim, name in zip(value.shape.dims, spec.dims, strict=True)]
        )


def export_onnx(
    component: Component, family: Family, module: torch.nn.Module, example: tuple[torch.Tensor, ...], out: Path
) -> dict[str, int]:
    """Write `out` (model.onnx, plus model.onnx.data when large), cleaned for TensorRT's parser (graph_cleanup.py),
    and check it; returns what the cleanup did.

    Exported without the optimizer so initializer names stay those of the torch parameters (LoRA refit matches
    weights by name); the optimizer renames and transposes them."""
    with torch.no_grad(), warnings.catch_warnings():
        # Tied dims (one Dim object on several inputs) make the exporter say so once per extra use: expected.
        warnings.filterwarnings("ignore", message=r".*shares the same shape constraints")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*LeafSpec")
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=[s.name for s in component.inputs],
            output_names=[s.name for s in component.outputs],
            dynamic_shapes=_as_arguments(module, dynamic_shapes(component, family)),
            optimize=False,
            verbose=False,
        )
    _check_dynamic_inputs(program, component)
    _name_dims(program, component)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(out), external_data=size > EXTERNAL_DATA_BYTES)
    # Constants folded and sequences made Splits, weights untouched: what TensorRT's ONNX parser takes.
    model = onnx.load(str(out), load_external_data=False)
    cleaned = graph_cleanup.clean(model)
    onnx.save(model, str(out))  # external weights, if any, stay in their file: only the graph changed
    # ONNX's opset-18 type constraints leave BF16 out of Conv and a few others, which TensorRT takes anyway (its
    # parser is the check of a BF16 graph): full shape and type inference for FP32 graphs only.
    full = all(p.dtype == torch.float32 for p in module.parameters())
    onnx.checker.check_model(str(out), full_check=full)  # the path form works past 2 GB
    return cleaned


@contextmanager
def contiguous_group_norms(module: torch.nn.Module) -> Iterator[None]:
    """Feed every GroupNorm a contiguous input while the torch reference runs.

    diffusers' VAE attention hands its output on in channels-last strides, and torch's CPU GroupNorm kernel for
    that layout accumulates far less exactly (measured on the tiny VAE: 7.5e-5 off float64 against 7e-7 for the
    same values contiguous). Memory layout only, values unchanged: parity then measures the ONNX graph rather than
    that kernel.
    """

    def pre_hook(_: torch.nn.Module, args: tuple) -> tuple:
        return (args[0].contiguous(), *args[1:])

    handles = [m.register_forward_pre_hook(pre_hook) for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reference(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The torch outputs that ONNX Runtime must match."""
    with torch.no_grad(), contiguous_group_norms(module):
        out = module(*inputs)
    return out if isinstance(out, tuple) else (out,)


def max_errors(
    component: Component, module: torch.nn.Module, adapter: Adapter, onnx_path: Path, shapes: Sequence[Shape]
) -> list[dict]:
    """Max |ONNX Runtime - torch| per output at each shape, on seeded random inputs of that shape."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    used = {d for spec in component.inputs for d in spec.dims if isinstance(d, str)}
    rows = []
    for shape in shapes:
        torch.manual_seed(1)
        inputs = adapter.example(module, shape)
        expected = reference(module, inputs)
        feeds = {spec.name: t.numpy() for spec, t in zip(component.inputs, inputs, strict=True)}
        got = session.run([s.name for s in component.outputs], feeds)
        errors = {}
        for spec, g, e in zip(component.outputs, got, expected, strict=True):
            if g.shape != tuple(e.shape):
                raise ParityError(f"{component.triton_model}: {spec.name} has shape {g.shape}, torch {tuple(e.shape)}")
            errors[spec.name] = float(np.abs(g - e.numpy()).max())
        rows.append({"shape": {k: v for k, v in shape.items() if k in used}, "max_abs_error": errors})
    return rows


def check_parity(component: Component, rows: list[dict]) -> float:
    """The worst error; raises ParityError above PARITY_LIMIT. A NaN fails too (max() would skip it)."""
    errors = [err for row in rows for err in row["max_abs_error"].values()]
    if not errors or not all(err <= PARITY_LIMIT for err in errors):
        raise ParityError(f"{component.triton_model}: ONNX Runtime differs from torch: {errors} (limit {PARITY_LIMIT})")
    return max(errors)
