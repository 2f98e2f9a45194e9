"""Export one wrapped component to ONNX (torch.export / dynamo), check it, and compare ONNX Runtime with torch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import torch

from registry import Component, Family

from .adapters import Adapter, Shape

OPSET = 18
PARITY_LIMIT = 1e-4  # float32 here; anything larger is a wrong graph, not float noise
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB ceiling: larger models keep weights beside the graph


class ParityError(AssertionError):
    pass


def dynamic_shapes(component: Component, family: Family) -> tuple[dict[int, torch.export.Dim], ...]:
    """torch.export dims for every symbolic axis, one Dim object per name so shared axes stay tied together."""
    dims = {d.name: torch.export.Dim(d.name, min=d.min, max=d.max) for d in family.dims}
    return tuple({axis: dims[d] for axis, d in enumerate(spec.dims) if isinstance(d, str)} for spec in component.inputs)


def export_onnx(component: Component, family: Family, module: torch.nn.Module, adapter: Adapter, out: Path) -> float:
    """Write `out` (model.onnx); returns seconds. Exported without the optimizer so initializer names stay those of
    the torch parameters (LoRA refit matches weights by name)."""
    t0 = time.perf_counter()
    example = adapter.example(module, adapter.shapes[0])
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=[s.name for s in component.inputs],
            output_names=[s.name for s in component.outputs],
            dynamic_shapes=dynamic_shapes(component, family),
            optimize=False,
            verbose=False,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    program.save(str(out), external_data=size > _EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(out), full_check=True)  # path form: works past 2 GB
    return time.perf_counter() - t0


def max_errors(
    component: Component, module: torch.nn.Module, adapter: Adapter, onnx_path: Path, shapes: tuple[Shape, ...]
) -> list[dict]:
    """Max |ONNX Runtime - torch| per output at each shape, on fresh random inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = []
    for shape in shapes:
        torch.manual_seed(1)
        inputs = adapter.example(module, shape)
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {spec.name: t.numpy() for spec, t in zip(component.inputs, inputs, strict=True)}
        got = session.run([s.name for s in component.outputs], feeds)
        errors = {
            spec.name: float(np.abs(g - e.numpy()).max())
            for spec, g, e in zip(component.outputs, got, expected, strict=True)
        }
        rows.append({"shape": dict(shape), "max_abs_error": errors})
    return rows


def check_parity(component: Component, rows: list[dict]) -> None:
    worst = max(err for row in rows for err in row["max_abs_error"].values())
    if not worst <= PARITY_LIMIT:
        raise ParityError(f"{component.triton_model}: ONNX Runtime differs from torch by {worst:.2e} > {PARITY_LIMIT}")
