"""Every component the registry serves from an exported graph: its ONNX has the registry's inputs and outputs,
keeps every registry-dynamic axis dynamic, and equals its torch module in ONNX Runtime at the family's two shapes
(computed here, not read from the manifest)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from checkpoints import resolve, resolve_lora
from components.adapters import adapter_of, parity_shapes
from components.lora_merge import merge_lora
from export.onnx_export import PARITY_LIMIT, reference
from registry import FAMILIES, LORAS

EXPORTED = [(f, c) for f in FAMILIES.values() for c in f.components if c.backend("cpu") == "onnxruntime"]
IDS = [c.triton_model for _, c in EXPORTED]


@pytest.mark.parametrize(("family", "component"), EXPORTED, ids=IDS)
def test_graph_has_the_registry_tensors_with_dynamic_axes(model_repository, stack_dirs, family, component) -> None:
    graph = onnx.load(str(stack_dirs.onnx / component.triton_model / "model.onnx"), load_external_data=False).graph
    for values, specs in ((graph.input, component.inputs), (graph.output, component.outputs)):
        assert [v.name for v in values] == [s.name for s in specs]
        for value, spec in zip(values, specs, strict=True):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert len(dims) == len(spec.dims), spec.name
            for got, want in zip(dims, spec.dims, strict=True):
                if isinstance(want, str):
                    assert got == want, (spec.name, dims)  # dynamic, under the registry's name
                elif want > 0:
                    assert got == want, (spec.name, dims)


@pytest.mark.parametrize(("family", "component"), EXPORTED, ids=IDS)
def test_onnx_runtime_equals_torch_at_two_shapes(model_repository, stack_dirs, family, component) -> None:
    shapes = parity_shapes(family.name)
    used = {d for s in component.inputs for d in s.dims if isinstance(d, str)}
    first, second = ({k: v for k, v in s.items() if k in used} for s in shapes)
    # The graph is run off its traced shape; in batch too, where it has one.
    assert first != second and ("batch" not in used or first["batch"] != second["batch"])
    adapter = adapter_of(family.name, component.exporter)
    folder = resolve(component.checkpoints[0], "tiny", stack_dirs.checkpoints).path / component.subfolder
    module = adapter.load(folder).eval()
    if component.merged_lora:  # merged at build time: the graph holds the fused weights
        lora = resolve_lora(component.merged_lora, "tiny", stack_dirs.checkpoints).file
        merge_lora(module.model, lora, family.pipeline_class, LORAS[component.merged_lora].scale)
    session = ort.InferenceSession(
        str(stack_dirs.onnx / component.triton_model / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for shape in shapes:
        torch.manual_seed(7)
        inputs = adapter.example(module, shape)
        expected = reference(module, inputs)
        got = session.run(None, {s.name: t.numpy() for s, t in zip(component.inputs, inputs, strict=True)})
        for g, e, spec in zip(got, expected, component.outputs, strict=True):
            assert g.shape == tuple(e.shape), spec.name
            assert np.abs(g - e.numpy()).max() <= PARITY_LIMIT, (component.triton_model, spec.name, shape)
