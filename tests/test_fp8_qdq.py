"""export/fp8_qdq.py: the tiny FLUX-schnell transformer's FP8 Q/DQ graph, calibrated by running the stock
FluxPipeline, run in ONNX Runtime (CPU executes FP8 Q/DQ at opset 19) against a torch emulation of the same static
FP8 quantization; which GEMMs got Q/DQ; where the scales come from; when the graph is rebuilt. TensorRT itself is
not here (tests/test_tensorrt_build.py checks the plumbing with a fake)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from onnx import numpy_helper

from artifacts import file_sha256
from components.adapters import INITIALIZER_PREFIX, adapter_of
from components.fp8 import fp8_layer_names
from export import fp8_qdq as fq
from export import manifest as mf
from export import tensorrt_build as tb
from registry import FAMILIES

FLUX = FAMILIES["flux"]
SCHNELL = next(c for c in FLUX.components if c.triton_model == "flux_schnell_transformer")
# Tiny and fast: two prompts, two steps, 64 x 64 (16 image tokens).
CALIBRATION = fq.Calibration(prompts=("a red fox in the snow", "a city at night"), steps=2, width=64, height=64)


@pytest.fixture(scope="module")
def schnell_dir(tiny_checkpoint_dirs: dict[str, Path]) -> Path:
    return tiny_checkpoint_dirs["flux-schnell"]


@pytest.fixture(scope="module")
def onnx_copy(flux_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported FLUX-schnell transformer with its export manifest entry, in a folder of its own (editable)."""
    onnx_dir = tmp_path_factory.mktemp("onnx")
    shutil.copytree(flux_onnx_dir / SCHNELL.triton_model, onnx_dir / SCHNELL.triton_model)
    mf.save(onnx_dir, {"models": {SCHNELL.triton_model: mf.load(flux_onnx_dir)["models"][SCHNELL.triton_model]}})
    return onnx_dir


def _build(onnx_dir: Path, schnell_dir: Path, qdq_dir: Path, calibration: fq.Calibration = CALIBRATION, **kw):
    return fq.build_qdq_onnx(
        SCHNELL, FLUX, onnx_dir, {"flux-schnell": schnell_dir}, qdq_dir=qdq_dir, calibration=calibration, **kw
    )


@pytest.fixture(scope="module")
def qdq(onnx_copy: Path, schnell_dir: Path) -> tuple[Path, dict]:
    path, entry, status = _build(onnx_copy, schnell_dir, onnx_copy / fq.QDQ_DIR, force=True)
    assert status == fq.BUILT and path == onnx_copy / fq.QDQ_DIR / SCHNELL.triton_model / "model.onnx"
    return path, entry


@pytest.fixture(scope="module")
def layers(schnell_dir: Path) -> list[str]:
    """The layers the torch GPU path runs in FP8 (the same rule, the registry's pattern)."""
    module = adapter_of(FLUX.name, SCHNELL.exporter).load(schnell_dir / "transformer")
    return fp8_layer_names(module.model, SCHNELL.fp8_layers)


def _e4m3(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static FP8 fake quantization: x / s clamped to +-448, rounded to float8 e4m3fn and back, times s."""
    return (t / scale).clamp(-fq.E4M3_MAX, fq.E4M3_MAX).to(torch.float8_e4m3fn).float() * scale


@pytest.fixture()
def emulated(schnell_dir: Path, qdq: tuple[Path, dict]) -> Iterator[torch.nn.Module]:
    """The torch transformer with each selected Linear computing F.linear(fq(x, s_x), fq(W, s_w per row), b), the
    scales recomputed here: s_x = amax / 448 from the calibration record, s_w from the torch weights."""
    module = adapter_of(FLUX.name, SCHNELL.exporter).load(schnell_dir / "transformer").eval()
    for name, amax in qdq[1]["activation_amax"].items():
        linear = module.model.get_submodule(name)
        s_x = torch.tensor(np.float32(amax / fq.E4M3_MAX))
        s_w = (linear.weight.detach().abs().amax(dim=1) / fq.E4M3_MAX)[:, None]

        def forward(x: torch.Tensor, linear=linear, s_x=s_x, s_w=s_w) -> torch.Tensor:
            return F.linear(_e4m3(x, s_x), _e4m3(linear.weight, s_w), linear.bias)

        linear.forward = forward
    yield module


def _denoising_inputs(schnell_dir: Path) -> list[torch.Tensor]:
    """The transformer's inputs at the second step of a real FluxPipeline run (another prompt and seed than the
    calibration's), in the registry's input order."""
    pipe = FluxPipeline.from_pretrained(schnell_dir)
    pipe.set_progress_bar_config(disable=True)
    seen: list[dict] = []
    pipe.transformer.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw), with_kwargs=True)
    generator = torch.Generator().manual_seed(11)
    pipe(
        prompt="a bowl of ramen", num_inference_steps=2, width=64, height=64, output_type="latent", generator=generator
    )
    return [seen[1][spec.name] for spec in SCHNELL.inputs]


def _run(path: Path, inputs: list[torch.Tensor]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {s.name: t.numpy() for s, t in zip(SCHNELL.inputs, inputs, strict=True)})[0]


def test_qdq_graph_runs_in_onnxruntime_like_torch_fp8(
    qdq: tuple[Path, dict], emulated: torch.nn.Module, onnx_copy: Path, schnell_dir: Path
) -> None:
    inputs = _denoising_inputs(schnell_dir)
    quantized = _run(qdq[0], inputs)
    fp32 = _run(onnx_copy / SCHNELL.triton_model / "model.onnx", inputs)
    with torch.no_grad():
        expected = emulated(*inputs).numpy()
    assert quantized.shape == fp32.shape == expected.shape
    # Same FP8 values on both sides, but for float noise before a Quantize: an element within noise of an FP8
    # rounding boundary rounds the other way (measured 6.5e-5 after the TensorRT graph cleanup, 4.8e-7 before; one
    # FP8 step of one element), far under the FP8 error itself (below: > 1.8e-3).
    assert np.abs(quantized - expected).max() < 5e-4
    # Against FP32: an FP8-sized error, neither zero (Q/DQ inactive) nor wrong (measured 1.3e-2 at max |y| 1.8).
    relative = np.abs(quantized - fp32).max() / np.abs(fp32).max()
    assert 1e-3 < relative < 5e-2, relative


def test_every_selected_gemm_and_only_those_got_qdq(qdq: tuple[Path, dict], layers: list[str], onnx_copy) -> None:
    path, entry = qdq
    assert entry["layers"] == entry["gemms"] == len(layers) == 17  # tiny FLUX: 1 double + 1 single block
    assert entry["absent"] == []
    assert not any("norm" in n or "embed" in n or n == "proj_out" for n in layers)
    graph = onnx.load(str(path)).graph
    source = onnx.load(str(onnx_copy / SCHNELL.triton_model / "model.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    gemms = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert len(gemms) == sum(n.op_type in ("MatMul", "Gemm") for n in source.node)  # none added, none lost

    def weight_of(value: str) -> str:  # back through Q/DQ and Transpose to the initializer
        while value in producer and producer[value].op_type in ("DequantizeLinear", "QuantizeLinear", "Transpose"):
            value = producer[value].input[0]
        return value

    quantized = set()
    for gemm in gemms:
        x, w = (producer.get(v) for v in gemm.input[:2])
        behind_qdq = [p is not None and p.op_type == "DequantizeLinear" for p in (x, w)]
        weight = weight_of(gemm.input[1])
        if all(behind_qdq):
            quantized.add(weight)
            scale = graph.initializer[[t.name for t in graph.initializer].index(x.input[1])]
            layer = weight.removeprefix(INITIALIZER_PREFIX).removesuffix(".weight")
            # The activation scale is the calibration's amax / 448.
            assert numpy_helper.to_array(scale) == np.float32(entry["activation_amax"][layer] / fq.E4M3_MAX)
        else:
            assert not any(behind_qdq), gemm.name
    assert quantized == {f"{INITIALIZER_PREFIX}{n}.weight" for n in layers}
    # The engine builder counts them as FP8 (4 per GEMM), opset 19.
    assert tb.quantize_nodes(path) == {"fp8": 4 * len(layers), "other": 0}
    assert tb.require_fp8_qdq(path) == 4 * len(layers)
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain == ""] == [fq.QDQ_OPSET]


def _graph(*nodes: onnx.NodeProto) -> onnx.GraphProto:
    """x (batch, 4) through `nodes` to y, with one 4 x 4 weight initializer 'model.lin.weight'."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "model.lin.weight")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    return onnx.helper.make_graph(list(nodes), "g", [x], [y], [w])


def test_a_layer_that_cannot_be_found_fails_loudly(onnx_copy: Path) -> None:
    model = onnx.load(str(onnx_copy / SCHNELL.triton_model / "model.onnx"))
    # The real export with to_q's weight renamed: its module's nodes are still there, so this is no dead code.
    weight = next(t for t in model.graph.initializer if t.name == "model.transformer_blocks.0.attn.to_q.weight")
    weight.name = "renamed"
    for n in model.graph.node:
        n.input[:] = ["renamed" if i == "model.transformer_blocks.0.attn.to_q.weight" else i for i in n.input]
    with pytest.raises(fq.QdqError, match="transformer_blocks.0.attn.to_q: nodes of its module are in the graph"):
        fq.insert_qdq(model, {"transformer_blocks.0.attn.to_k": 1.0, "transformer_blocks.0.attn.to_q": 1.0})
    node = onnx.helper.make_node
    # A weight used by something other than a GEMM, a GEMM computing x W (not x W^T), a weight no node reads.
    cases = {
        "reaches a Mul": _graph(node("Mul", ["x", "model.lin.weight"], ["y"])),
        "does not compute x W\\^T": _graph(node("MatMul", ["x", "model.lin.weight"], ["y"])),
        "no MatMul/Gemm reads": _graph(node("Identity", ["x"], ["y"])),
    }
    for message, graph in cases.items():
        with pytest.raises(fq.QdqError, match=message):
            fq.find_gemms(graph, ["lin"])
    # The exporter's form is found: Transpose -> MatMul (axis 1 of W^T) and Gemm(transB=1) (axis 0 of W).
    (site,) = fq.find_gemms(
        _graph(node("Transpose", ["model.lin.weight"], ["wt"]), node("MatMul", ["x", "wt"], ["y"])), ["lin"]
    )["lin"]
    assert (site.node.op_type, site.weight_input, site.axis) == ("MatMul", "wt", 1)
    (site,) = fq.find_gemms(_graph(node("Gemm", ["x", "model.lin.weight"], ["y"], transB=1)), ["lin"])["lin"]
    assert (site.node.op_type, site.weight_input, site.axis) == ("Gemm", "model.lin.weight", 0)


def _scoped(op: str, inputs: list[str], scope: str, **attrs: int) -> onnx.NodeProto:
    n = onnx.helper.make_node(op, inputs, ["y"], **attrs)
    onnx.helper.set_metadata_props(n, {"pkg.torch.onnx.name_scopes": repr(["", "model", scope])})
    return n


def test_layers_the_exporter_dropped_are_told_apart_from_renamed_ones() -> None:
    """Qwen-Image's last block's text-stream linears are dead code in the graph (measured on the tiny export: its
    to_add_out and txt_mlp, 3 of 24 layers): skipped. A layer whose module still has nodes but no weight is not."""
    graph = _graph(_scoped("Gemm", ["x", "model.lin.weight"], "model.lin", transB=1))
    assert fq.absent_layers(graph, ["lin", "gone"]) == ["gone"]
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    counts = fq.insert_qdq(model, {"lin": 1.0, "gone": 1.0})
    assert counts["layers"] == 1 and counts["absent"] == ["gone"]
    with pytest.raises(fq.QdqError, match="none of the 1 selected layers"):
        fq.insert_qdq(model, {"gone": 1.0})
    renamed = _graph(_scoped("Identity", ["x"], "model.lin2"))
    with pytest.raises(fq.QdqError, match="nodes of its module are in the graph"):
        fq.absent_layers(renamed, ["lin2"])
    with pytest.raises(fq.QdqError, match="no module scopes"):  # without the exporter's metadata: cannot tell
        fq.absent_layers(_graph(onnx.helper.make_node("Identity", ["x"], ["y"])), ["lin2"])


def test_scales_come_from_the_calibration_inputs() -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
    batches = [torch.randn(4, 16) for _ in range(3)]

    def amax_over(scale: float) -> dict[str, float]:
        return fq.collect_amax(module, ["0", "2"], lambda: [module(scale * x) for x in batches])

    once, twice = amax_over(1.0), amax_over(2.0)
    assert once["0"] == max(float(x.abs().max()) for x in batches)  # the largest |input| over every call
    assert twice["0"] == 2 * once["0"]  # inputs twice as large: the first layer's scale doubles exactly
    assert twice["2"] != once["2"] and twice["2"] > once["2"]  # and the next layer sees other inputs
    assert fq.activation_scale(once["0"]) == np.float32(once["0"] / 448)
    with pytest.raises(fq.QdqError, match="never called 1 selected layers"):
        fq.collect_amax(module, ["0", "2"], lambda: module[0](batches[0]))
    w = np.array([[1.0, -896.0], [0.5, 0.25], [0.0, 0.0]], np.float32)
    assert fq.weight_scales(w).tolist() == pytest.approx([2.0, 0.5 / 448, fq.MIN_AMAX / 448])


def test_rebuilt_only_when_an_input_changes(
    qdq: tuple[Path, dict], onnx_copy: Path, schnell_dir: Path, tmp_path: Path
) -> None:
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(onnx_copy, onnx_dir)  # the export and its Q/DQ graph, both editable here
    qdq_dir, first = onnx_dir / fq.QDQ_DIR, qdq[1]
    path, entry, status = _build(onnx_dir, schnell_dir, qdq_dir)
    assert status == fq.UNCHANGED and entry["key"] == first["key"]

    # Other calibration settings: rebuilt, from another run (other scales).
    fewer = fq.Calibration(prompts=CALIBRATION.prompts[:1], steps=1, width=64, height=64)
    _, entry, status = _build(onnx_dir, schnell_dir, qdq_dir, fewer)
    assert status == fq.BUILT and entry["key"] != first["key"]
    assert entry["activation_amax"] != first["activation_amax"]
    assert _build(onnx_dir, schnell_dir, qdq_dir, fewer)[2] == fq.UNCHANGED

    # A re-exported source graph (its sha256 in the export manifest moves): rebuilt.
    manifest = mf.load(onnx_dir)
    manifest["models"][SCHNELL.triton_model]["sha256"] = "0" * 64
    mf.save(onnx_dir, manifest)
    _, entry, status = _build(onnx_dir, schnell_dir, qdq_dir, fewer)
    assert status == fq.BUILT and entry["source"]["sha256"] == "0" * 64

    # A changed file on disk is not trusted.
    path.write_bytes(path.read_bytes() + b"\0")
    assert _build(onnx_dir, schnell_dir, qdq_dir, fewer)[2] == fq.BUILT
    recorded = json.loads((qdq_dir / mf.MANIFEST).read_text())["models"][SCHNELL.triton_model]
    assert recorded["sha256"] == file_sha256(path) and recorded["calibration"]["steps"] == 1
