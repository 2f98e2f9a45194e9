"""export/tensorrt_build.py: engine profiles for every registry component (checked against the exported ONNX), plan
names, the FP8 precondition, refit bookkeeping and the plan manifest's stale/fresh decisions, all on the CPU with a
fake build step. One test builds and refits a real engine; it runs only where TensorRT and a CUDA GPU are."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from artifacts import file_sha256
from export import manifest as mf
from export import tensorrt_build as tb
from model_repository import plans
from registry import FAMILIES, Component, Dim
from stack.build import BuildDirs

ALL_COMPONENTS = [pytest.param(f, c, id=c.triton_model) for f in FAMILIES.values() for c in f.components]
TRT_VERSION = "10.9.0"


def _onnx(stack_dirs: BuildDirs, component: Component) -> Path:
    return stack_dirs.onnx / component.triton_model / "model.onnx"


# --- profiles -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "component"), ALL_COMPONENTS)
def test_profiles_for_every_component(family, component, model_repository: Path, stack_dirs: BuildDirs) -> None:
    onnx_path = _onnx(stack_dirs, component)
    has_graph = bool({runtime for _, runtime in component.backends} & {"onnxruntime", "tensorrt"})
    assert onnx_path.is_file() == has_graph, "every component with a graph runtime is exported, only those"
    fixed = [(s.name, axis) for s in component.inputs for axis, d in enumerate(s.dims) if d == -1]
    if not has_graph and fixed:
        # No graph to read a checkpoint-fixed size from: the error names the input and axis.
        name, axis = fixed[0]
        with pytest.raises(ValueError, match=f"{name} axis {axis} is fixed by the checkpoint config"):
            tb.input_profiles(component, family)
        return
    profiles = tb.input_profiles(component, family, onnx_path if has_graph else None)
    assert list(profiles) == [s.name for s in component.inputs]

    graph_shapes = tb.onnx_io_shapes(onnx_path)[0] if has_graph else {}
    dims = tb.component_dims(component, family)
    seen: dict[str, set[tuple[int, int, int]]] = {}
    for spec in component.inputs:
        lo, opt, hi = profiles[spec.name]
        assert len(lo) == len(opt) == len(hi) == len(spec.dims)
        for axis, dim in enumerate(spec.dims):
            assert 0 < lo[axis] <= opt[axis] <= hi[axis], (spec.name, axis)
            if isinstance(dim, str):
                seen.setdefault(dim, set()).add((lo[axis], opt[axis], hi[axis]))
            elif dim == -1:  # a checkpoint-fixed size: the exported graph's
                assert lo[axis] == opt[axis] == hi[axis] == graph_shapes[spec.name][axis]
            else:
                assert lo[axis] == opt[axis] == hi[axis] == dim
    # One range per named dim across all inputs, and it is the component's.
    for name, ranges in seen.items():
        assert ranges == {(dims[name].min, dims[name].opt, dims[name].max)}, name
    if has_graph:
        tb.check_profiles(onnx_path, profiles)  # what build_engine checks before TensorRT loads


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_dim_ranges_agree_with_each_other(family) -> None:
    """height = 8 latent_height, image_tokens covers the packed latent: for the family and each capped component."""
    assert tb.dim_relation_problems({d.name: d for d in family.dims}, family) == []
    for component in family.components:
        assert tb.dim_relation_problems(tb.component_dims(component, family), family) == [], component.triton_model
    broken = {"height": Dim("height", 256, 1024, 2048), "latent_height": Dim("latent_height", 32, 128, 200)}
    assert tb.dim_relation_problems(broken, family) == [
        f"height.max=2048 != {family.vae_scale} * latent_height.max=200"
    ]


def test_vae_gets_its_own_capped_profile(model_repository: Path, stack_dirs: BuildDirs) -> None:
    flux = FAMILIES["flux"]
    vae = next(c for c in flux.components if c.triton_model == "flux_vae_decoder")
    lo, opt, hi = tb.input_profiles(vae, flux, _onnx(stack_dirs, vae))["latent"]
    cap = vae.profile_dims[0].max  # the registry's own VAE profile (1344 px = 168 latent cells)
    assert cap == 1344 // flux.vae_scale
    assert hi[2:] == (cap, cap) and lo[2:] == (32, 32) and opt[2:] == (128, 128)
    assert tb.narrower_than_family(vae, flux) == {"latent_height": (cap, 256), "latent_width": (cap, 256)}
    # The transformer keeps the family's full range, and Qwen's VAE is not capped.
    transformer = next(c for c in flux.components if c.role == "transformer")
    assert tb.narrower_than_family(transformer, flux) == {}
    qwen = FAMILIES["qwen-image"]
    assert all(tb.narrower_than_family(c, qwen) == {} for c in qwen.components)
    # Another registry profile changes the plan's profile.
    narrowed = dataclasses.replace(vae, profile_dims=(Dim("latent_height", 32, 64, 96),))
    lo, opt, hi = tb.input_profiles(narrowed, flux, _onnx(stack_dirs, vae))["latent"]
    assert (lo[2], opt[2], hi[2]) == (32, 64, 96) and hi[3] == 256


def test_profile_errors_name_what_is_wrong(model_repository: Path, stack_dirs: BuildDirs) -> None:
    flux = FAMILIES["flux"]
    transformer = next(c for c in flux.components if c.triton_model == "flux_schnell_transformer")
    with pytest.raises(ValueError, match="hidden_states axis 2 is fixed by the checkpoint config"):
        tb.input_profiles(transformer, flux)
    vae = next(c for c in flux.components if c.triton_model == "flux_vae_decoder")
    with pytest.raises(ValueError, match="has inputs"):  # the graph of another component
        tb.input_profiles(vae, flux, _onnx(stack_dirs, transformer))
    good = tb.input_profiles(vae, flux, _onnx(stack_dirs, vae))
    bad_channels = {"latent": tuple((s[0], 4, *s[2:]) for s in good["latent"])}
    with pytest.raises(ValueError, match="latent axis 1 is 16 in the graph"):
        tb.check_profiles(_onnx(stack_dirs, vae), bad_channels)
    with pytest.raises(ValueError, match="profiles for"):
        tb.check_profiles(_onnx(stack_dirs, vae), {"sample": good["latent"]})


# --- plan names -----------------------------------------------------------------------------------------------------


def test_plan_names_carry_gpu_and_tensorrt_version() -> None:
    assert plans.plan_filename("10.9.0", "9.0") == "model.sm90.trt10.9.0.plan"
    assert plans.plan_filename("10.13.2.6", "8.9") == "model.sm89.trt10.13.2.6.plan"
    assert plans.plan_filename("10.9.0", "10.0") == "model.sm100.trt10.9.0.plan"
    assert plans.plan_filename("10.9.0", "9.0") != plans.plan_filename("10.10.0", "9.0")
    for version, cc in (("10.9", "90"), ("10.9", "sm90"), ("v10", "9.0"), ("", "9.0")):
        with pytest.raises(ValueError):
            plans.plan_filename(version, cc)


def test_cc_model_filenames() -> None:
    assert plans.cc_model_filenames("10.9.0", ["9.0", "10.0", "8.9", "9.0"]) == {
        "8.9": "model.sm89.trt10.9.0.plan",
        "9.0": "model.sm90.trt10.9.0.plan",
        "10.0": "model.sm100.trt10.9.0.plan",
    }
    assert plans.cc_model_filenames("10.9.0", []) == {}


# --- FP8 ------------------------------------------------------------------------------------------------------------


def _linear_graph(path: Path, quant: str | None) -> Path:
    """y = x @ w, with w behind Q/DQ of the given kind ("fp8", "int8", "trt_fp8") or none."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    nodes, inits, opset = [], [w, scale], 19
    weight = "w"
    if quant in ("fp8", "int8"):
        if quant == "fp8":
            zero = helper.make_tensor("zero", TensorProto.FLOAT8E4M3FN, [], [0.0])
        else:
            zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
        inits.append(zero)
        nodes += [
            helper.make_node("QuantizeLinear", ["w", "scale", "zero"], ["wq"]),
            helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["wdq"]),
        ]
        weight = "wdq"
    elif quant == "trt_fp8":
        nodes += [
            helper.make_node("TRT_FP8QuantizeLinear", ["w", "scale"], ["wq"], domain="trt"),
            helper.make_node("TRT_FP8DequantizeLinear", ["wq", "scale"], ["wdq"], domain="trt"),
        ]
        weight = "wdq"
    nodes.append(helper.make_node("MatMul", ["x", weight], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("trt", 1)] if quant == "trt_fp8" else [])
    onnx.save(helper.make_model(graph, opset_imports=imports), str(path))
    return path


def test_fp8_needs_fp8_qdq_nodes(tmp_path: Path, model_repository: Path, stack_dirs: BuildDirs) -> None:
    assert tb.quantize_nodes(_linear_graph(tmp_path / "fp8.onnx", "fp8")) == {"fp8": 2, "other": 0}
    assert tb.quantize_nodes(_linear_graph(tmp_path / "trt.onnx", "trt_fp8")) == {"fp8": 2, "other": 0}
    assert tb.quantize_nodes(_linear_graph(tmp_path / "int8.onnx", "int8")) == {"fp8": 0, "other": 2}
    assert tb.require_fp8_qdq(tmp_path / "fp8.onnx") == 2
    with pytest.raises(tb.BuildError, match="INT8/INT4, not FP8"):
        tb.require_fp8_qdq(tmp_path / "int8.onnx")

    # The registry's FP8 transformer's plain FP32 export (no Q/DQ): refused on the CPU, before TensorRT loads; the
    # message points at the Q/DQ graph export/fp8_qdq.py writes (test_fp8_component_builds_from_its_qdq_graph).
    flux = FAMILIES["flux"]
    transformer = next(c for c in flux.components if c.triton_model == "flux_schnell_transformer")
    onnx_path = _onnx(stack_dirs, transformer)
    profiles = tb.input_profiles(transformer, flux, onnx_path)
    with pytest.raises(tb.BuildError, match="FP8 QuantizeLinear/DequantizeLinear nodes .* it has none.*fp8_qdq.py"):
        tb.build_engine(onnx_path, tmp_path / "x.plan", profiles, precision="fp8", timing_cache_path=tmp_path / "c")
    with pytest.raises(ValueError, match="precision 'fp16'"):
        tb.build_engine(onnx_path, tmp_path / "x.plan", profiles, precision="fp16", timing_cache_path=tmp_path / "c")
    assert not (tmp_path / "x.plan").exists()


# --- refit bookkeeping and progress ---------------------------------------------------------------------------------


def test_refit_always_starts_from_the_base_weights() -> None:
    base = {"a": np.zeros(2), "b": np.zeros(2), "c": np.zeros(2)}
    lora_a = {"a": np.ones(2), "b": np.ones(2)}
    lora_b = {"b": np.full(2, 2.0)}
    names = ["a", "b", "c"]
    assert {k: v.tolist() for k, v in tb.refit_set(names, base, lora_a).items()} == {
        "a": [1, 1],
        "b": [1, 1],
        "c": [0, 0],
    }
    # B after A: every weight is set, so A's change to "a" does not survive into B.
    assert {k: v.tolist() for k, v in tb.refit_set(names, base, lora_b).items()} == {
        "a": [0, 0],
        "b": [2, 2],
        "c": [0, 0],
    }
    with pytest.raises(tb.BuildError, match="not refittable"):
        tb.refit_set(names, base, {"d": np.zeros(1)})
    with pytest.raises(tb.BuildError, match="neither a new nor a base value"):
        tb.refit_set(names, {}, lora_a)


def test_bf16_refit_weights_round_like_torch() -> None:
    """A BF16 plan's refit weights go to TensorRT as bit patterns (numpy has no bfloat16): rounded as torch rounds."""
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(0).normal(0, 100, 4096).astype(np.float32)
    values[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-40, 3.4e38]
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(tb.bf16_bits(values), expected)
    nan = torch.from_numpy(tb.bf16_bits(np.array([np.nan], np.float32)).view(np.int16)).view(torch.bfloat16)
    assert torch.isnan(nan).all()


def test_base_weights_read_from_the_onnx_graph(model_repository: Path, stack_dirs: BuildDirs) -> None:
    onnx_path = stack_dirs.onnx / "flux_vae_decoder" / "model.onnx"
    weights = tb._OnnxInitializers(onnx_path)
    graph = onnx.load(str(onnx_path)).graph
    assert len(weights) == len(graph.initializer) and set(weights) == {t.name for t in graph.initializer}
    first = graph.initializer[0]
    np.testing.assert_array_equal(weights[first.name], numpy_helper.to_array(first))


def test_refittable_where_loras_reach() -> None:
    refit = {c.triton_model for f in FAMILIES.values() for c in f.components if tb.refittable(c, f)}
    assert refit == {"qwen_image_transformer", "qwen_image_fast_transformer"}


def test_progress_printer_logs_phases_and_quarters() -> None:
    lines: list[str] = []
    printer = tb._ProgressPrinter(lines.append)
    printer.start("Building engine", None, 8)
    printer.start("Tactic search", "Building engine", 3)
    printer.start("Layer 7", "Tactic search", 2)  # depth 2: not logged
    assert printer.step("Layer 7", 0) is True
    printer.finish("Layer 7")
    printer.finish("Tactic search")
    for step in range(8):
        assert printer.step("Building engine", step) is True
    printer.finish("Building engine")
    assert lines[0] == "[tensorrt] Building engine (8 steps)"
    assert lines[1] == "[tensorrt]   Tactic search (3 steps)"
    assert lines[2].startswith("[tensorrt]   Tactic search done in")
    assert [line for line in lines if "/8" in line] == [f"[tensorrt] Building engine: {n}/8" for n in (2, 4, 6, 8)]
    assert lines[-1].startswith("[tensorrt] Building engine done in") and not any("Layer 7" in x for x in lines)


# --- a family's plans: manifest decisions with a fake build step ----------------------------------------------------


class FakeBuilder:
    """Stands in for build_engine: writes a plan whose bytes depend on its inputs, records each call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, onnx_path: Path, out_path: Path, profiles, **kw) -> dict:
        self.calls.append({"onnx": onnx_path, "out": out_path, "profiles": profiles, **kw})
        body = {"precision": kw["precision"], "profiles": tb._json_profiles(profiles), "cc": kw["compute_capability"]}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(body))
        return {"precision": kw["precision"], "seconds": 0.0, "bytes": out_path.stat().st_size}


VAE = "flux_vae_decoder"


@pytest.fixture()
def vae_onnx_dir(tmp_path: Path, model_repository: Path, stack_dirs: BuildDirs) -> Path:
    """An export folder holding only the FLUX VAE, with its export manifest entry: editable per test."""
    onnx_dir = tmp_path / "onnx"
    shutil.copytree(stack_dirs.onnx / VAE, onnx_dir / VAE)
    mf.save(onnx_dir, {"models": {VAE: mf.load(stack_dirs.onnx)["models"][VAE]}})
    return onnx_dir


def _build(onnx_dir: Path, out_dir: Path, fake: FakeBuilder, **kw) -> dict:
    kw = {"capabilities": ["9.0"], "trt_version": TRT_VERSION, **kw}
    return tb.build_family_engines("flux", onnx_dir, out_dir, components=[VAE], builder=fake, log=lambda _: None, **kw)


def test_builds_once_then_skips(vae_onnx_dir: Path, tmp_path: Path) -> None:
    out, fake = tmp_path / "engines", FakeBuilder()
    result = _build(vae_onnx_dir, out, fake)
    assert result["last_run"] == {VAE: {"9.0": tb.BUILT}}
    (call,) = fake.calls
    plan = out / VAE / "1" / "model.sm90.trt10.9.0.plan"
    assert call["out"] == plan and plan.is_file()
    assert call["onnx"] == vae_onnx_dir / VAE / "model.onnx"
    assert call["timing_cache_path"] == out / "timing.cache"  # one cache for every component
    assert call["precision"] == "bf16" and call["refittable"] is False and call["optimization_level"] == 3
    assert call["bf16_io"] == ["latent", "sample"] and call["compute_capability"] == "9.0"
    entry = mf.load(out)["models"][VAE]["plans"]["9.0"]
    assert entry["file"] == plan.name and entry["sha256"] == file_sha256(plan)
    assert entry["onnx_sha256"] == mf.load(vae_onnx_dir)["models"][VAE]["sha256"]
    assert entry["narrower_than_family"] == {"latent_height": [168, 256], "latent_width": [168, 256]}

    again = _build(vae_onnx_dir, out, fake)
    assert again["last_run"] == {VAE: {"9.0": tb.UNCHANGED}} and len(fake.calls) == 1


def _edit_export_entry(onnx_dir: Path, field: str, value: str) -> None:
    manifest = mf.load(onnx_dir)
    manifest["models"][VAE][field] = value
    mf.save(onnx_dir, manifest)


def _apply_change(change: str, onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Make one kind of change; returns the build_family_engines arguments that carry it."""
    if change == "onnx_sha256":  # a re-exported graph
        _edit_export_entry(onnx_dir, "sha256", "0" * 64)
    elif change == "export_key":  # same graph bytes, new weights beside it: the export key moves, the hash need not
        _edit_export_entry(onnx_dir, "key", "1" * 64)
    elif change == "profile":  # the registry narrows the VAE's profile
        flux = FAMILIES["flux"]
        vae = next(c for c in flux.components if c.triton_model == VAE)
        narrower = dataclasses.replace(
            vae,
            profile_dims=(
                Dim("latent_height", 32, 128, 128),
                Dim("latent_width", 32, 128, 128),
                Dim("height", 256, 1024, 1024),
                Dim("width", 256, 1024, 1024),
            ),
        )
        components = tuple(narrower if c is vae else c for c in flux.components)
        monkeypatch.setitem(FAMILIES, "flux", dataclasses.replace(flux, components=components))
    return {
        "precision": {"precisions": {VAE: "fp32"}},
        "trt_version": {"trt_version": "10.10.0"},
        "compute_capability": {"capabilities": ["8.9"]},
        "flags": {"optimization_level": 5},
    }.get(change, {})


CHANGES = ["onnx_sha256", "export_key", "precision", "profile", "trt_version", "compute_capability", "flags"]


@pytest.mark.parametrize("change", CHANGES)
def test_each_kind_of_change_rebuilds(change: str, vae_onnx_dir: Path, tmp_path: Path, monkeypatch) -> None:
    out, fake = tmp_path / "engines", FakeBuilder()
    _build(vae_onnx_dir, out, fake)
    first = mf.load(out)["models"][VAE]["plans"]["9.0"]
    overrides = _apply_change(change, vae_onnx_dir, monkeypatch)
    result = _build(vae_onnx_dir, out, fake, **overrides)
    cc = overrides.get("capabilities", ["9.0"])[0]
    assert result["last_run"] == {VAE: {cc: tb.BUILT}} and len(fake.calls) == 2
    entry = mf.load(out)["models"][VAE]["plans"][cc]
    assert entry["key"] != first["key"]
    plans = sorted(p.name for p in (out / VAE / "1").iterdir())
    if change == "trt_version":  # one plan per GPU: the old TensorRT's file goes
        assert plans == ["model.sm90.trt10.10.0.plan"]
    elif change == "compute_capability":  # another GPU: its own plan beside the first
        assert plans == ["model.sm89.trt10.9.0.plan", "model.sm90.trt10.9.0.plan"]
        assert set(mf.load(out)["models"][VAE]["plans"]) == {"8.9", "9.0"}
    else:
        assert plans == ["model.sm90.trt10.9.0.plan"]
    assert _build(vae_onnx_dir, out, fake, **overrides)["last_run"] == {VAE: {cc: tb.UNCHANGED}}


def test_a_changed_plan_file_or_force_rebuilds(vae_onnx_dir: Path, tmp_path: Path) -> None:
    out, fake = tmp_path / "engines", FakeBuilder()
    _build(vae_onnx_dir, out, fake)
    (out / VAE / "1" / "model.sm90.trt10.9.0.plan").write_text("not the plan that was built")
    assert _build(vae_onnx_dir, out, fake)["last_run"] == {VAE: {"9.0": tb.BUILT}}
    assert _build(vae_onnx_dir, out, fake, force=True)["last_run"] == {VAE: {"9.0": tb.BUILT}}
    assert len(fake.calls) == 3


def test_what_build_family_engines_refuses(model_repository: Path, stack_dirs: BuildDirs, tmp_path: Path) -> None:
    fake = FakeBuilder()

    def build(**kw) -> dict:
        kw = {"capabilities": ["9.0"], "trt_version": TRT_VERSION, "builder": fake, "log": lambda _: None, **kw}
        return tb.build_family_engines("flux", stack_dirs.onnx, tmp_path / "engines", **kw)

    # Today no component's GPU backend is "tensorrt": nothing to build, and TensorRT is not needed to say so.
    assert build()["last_run"] == {} and not fake.calls
    # The registry's FP8 transformer without what calibrates its Q/DQ graph (the checkpoint whose pipeline runs)
    # fails before any plan is built, the VAE listed first included.
    with pytest.raises(tb.BuildError, match=r"precision 'fp8' builds from an FP8 Q/DQ graph.*Fp8Inputs"):
        build(components=[VAE, "flux_schnell_transformer"])
    with pytest.raises(tb.BuildError, match="Fp8Inputs.*'flux-schnell'"):  # another checkpoint's folder is no help
        build(components=["flux_schnell_transformer"], fp8=tb.Fp8Inputs({"flux-dev": stack_dirs.checkpoints}))
    assert not fake.calls
    built = build(components=["flux_schnell_transformer"], precisions={"flux_schnell_transformer": "bf16"})
    assert built["last_run"] == {"flux_schnell_transformer": {"9.0": tb.BUILT}}
    with pytest.raises(ValueError, match="no component of family flux"):
        build(components=["qwen_image_transformer"])
    with pytest.raises(tb.BuildError, match="no exported ONNX"):
        tb.build_family_engines(
            "qwen-image-edit",
            stack_dirs.onnx,
            tmp_path / "engines",
            components=["qwen_edit_text_encoder"],  # torch on every profile: never exported
            capabilities=["9.0"],
            trt_version=TRT_VERSION,
            builder=fake,
        )


# --- build_engine / refit_engine against a stand-in for the tensorrt module ------------------------------------------


def _fake_tensorrt() -> types.ModuleType:
    """The slice of TensorRT 10's Python API that build_engine and refit_engine call, as its bindings declare it
    (python/src/infer/pyCore.cpp of release 10.9), recording what is asked of it. It checks our plumbing — flags,
    profiles, I/O types, timing cache, progress monitor, refit bookkeeping — not TensorRT: that is the GPU test."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0.34"
    trt.float32, trt.bfloat16, trt.int64 = "FLOAT", "BF16", "INT64"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.BuilderFlag = types.SimpleNamespace(BF16="BF16", REFIT="REFIT", FP8="FP8")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})
    trt.nptype = lambda dtype: {"FLOAT": np.float32}[dtype]
    trt.built = []

    class Tensor:
        def __init__(self, value: onnx.ValueInfoProto) -> None:
            self.name = value.name
            self.dtype = trt.float32 if value.type.tensor_type.elem_type == TensorProto.FLOAT else trt.int64

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.outputs, self.weights = flags, [], [], {}

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: object) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            graph = onnx.load(path).graph
            self.network.inputs = [Tensor(v) for v in graph.input]
            self.network.outputs = [Tensor(v) for v in graph.output]
            self.network.weights = {t.name: numpy_helper.to_array(t).tolist() for t in graph.initializer}
            return True

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data + b"+timings"

    class Config:
        def __init__(self) -> None:
            self.flags, self.profiles, self.cache, self.progress_monitor, self.pools = [], [], None, None, {}
            self.builder_optimization_level = None

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pools[pool] = size

        def add_optimization_profile(self, profile: dict) -> None:
            self.profiles.append(profile)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return not cache.data.startswith(b"other-gpu")

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Profile(dict):
        def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
            self[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            monitor = config.progress_monitor
            monitor.phase_start("Building engine", None, 2)
            assert monitor.step_complete("Building engine", 0) and monitor.step_complete("Building engine", 1)
            monitor.phase_finish("Building engine")
            trt.built.append((network, config))
            refit = trt.BuilderFlag.REFIT in config.flags
            return json.dumps({"weights": network.weights if refit else {}}).encode()

    class Engine:
        def __init__(self, data: bytes) -> None:
            self.weights = json.loads(bytes(data))["weights"]

        def serialize(self) -> bytes:
            return json.dumps({"weights": self.weights}).encode()

    class Weights:
        def __init__(self, array: np.ndarray) -> None:
            self.array, self.dtype, self.size = array, trt.float32, array.size

    class Refitter:
        def __init__(self, engine: Engine, logger: object) -> None:
            self.engine, self.pending = engine, {}

        def get_all_weights(self) -> list[str]:
            return list(self.engine.weights)

        def get_missing_weights(self) -> list[str]:
            return []

        def get_weights_prototype(self, name: str) -> Weights:
            return Weights(np.asarray(self.engine.weights[name], np.float32))

        def set_named_weights(self, name: str, weights: Weights) -> bool:
            self.pending[name] = weights.array.tolist()
            return True

        def refit_cuda_engine(self) -> bool:  # like TensorRT: only what was set changes
            self.engine.weights.update(self.pending)
            return True

    trt.Builder, trt.OnnxParser, trt.Weights, trt.Refitter = Builder, OnnxParser, Weights, Refitter
    trt.Runtime = type(
        "Runtime", (), {"__init__": lambda self, logger: None, "deserialize_cuda_engine": lambda self, b: Engine(b)}
    )
    return trt


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tb, "device_compute_capability", lambda device=0: "9.0")
    return trt


def test_build_engine_plumbing(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.3, s).astype(np.float32) for s in ((16, 32), (32,), (32, 8), (8,))]
    onnx_path = _mlp(tmp_path / "mlp.onnx", *weights)
    cache, lines = tmp_path / "timing.cache", []
    (tmp_path / "timing.cache").write_bytes(b"earlier")
    profiles = {"x": ((1, 16), (2, 16), (4, 16))}
    record = tb.build_engine(
        onnx_path,
        tmp_path / "out" / "mlp.plan",
        profiles,
        timing_cache_path=cache,
        refittable=True,
        workspace_gb=2,
        bf16_io=["x", "y"],
        compute_capability="9.0",
        log=lines.append,
    )
    network, config = fake_trt.built[0]
    assert network.flags == 0 and config.flags == ["BF16", "REFIT"] and config.builder_optimization_level == 3
    assert config.profiles == [profiles] and config.pools == {"WORKSPACE": 2 << 30}
    assert [t.dtype for t in network.inputs + network.outputs] == ["BF16", "BF16"]
    assert cache.read_bytes() == b"earlier+timings"  # loaded, extended, saved
    assert record["tensorrt"] == "10.9.0.34" and record["compute_capability"] == "9.0"
    assert record["flags"]["builder_flags"] == ["BF16", "REFIT"] and record["profiles"]["x"] == [
        [1, 16],
        [2, 16],
        [4, 16],
    ]
    assert record["bytes"] == (tmp_path / "out" / "mlp.plan").stat().st_size
    assert "[tensorrt] Building engine (2 steps)" in lines and any(
        x.startswith("[tensorrt] Building engine done") for x in lines
    )

    # Another GPU's timing cache is dropped, not trusted; a strongly typed build sets no precision flag.
    cache.write_bytes(b"other-gpu")
    tb.build_engine(
        onnx_path, tmp_path / "b.plan", profiles, timing_cache_path=cache, strongly_typed=True, log=lines.append
    )
    network, config = fake_trt.built[1]
    assert network.flags == 1 << 1 and config.flags == [] and cache.read_bytes() == b"+timings"
    assert any("starting an empty timing cache" in x for x in lines)
    with pytest.raises(tb.BuildError, match="must be built on such a GPU"):
        tb.build_engine(onnx_path, tmp_path / "c.plan", profiles, timing_cache_path=cache, compute_capability="8.9")
    with pytest.raises(tb.BuildError, match="no input or output"):
        tb.build_engine(onnx_path, tmp_path / "c.plan", profiles, timing_cache_path=cache, bf16_io=["h0"])
    del fake_trt.BuilderFlag.BF16  # TensorRT 11: weak typing gone
    with pytest.raises(tb.BuildError, match="strongly_typed=True"):
        tb.build_engine(onnx_path, tmp_path / "c.plan", profiles, timing_cache_path=cache)


@pytest.fixture()
def pipelines_imported() -> None:
    """What calibration imports, imported before fake_trt stands in for `tensorrt`: torch._dynamo's first import
    looks tensorrt up with importlib.util.find_spec, which fails on a stand-in module that has no spec."""
    import diffusers.pipelines.flux.pipeline_flux  # noqa: F401
    import transformers.models.clip.modeling_clip  # noqa: F401
    import transformers.models.t5.modeling_t5  # noqa: F401


def test_fp8_component_builds_from_its_qdq_graph(
    pipelines_imported: None, fake_trt: types.ModuleType, model_repository: Path, stack_dirs: BuildDirs, tmp_path: Path
) -> None:
    """The registry's FP8 transformer: build_family_engines calibrates and writes its Q/DQ graph (export/fp8_qdq.py)
    and build_engine, against the fake TensorRT, parses that graph, finds its FP8 Q/DQ and builds; a rerun reuses
    both the graph and the plan."""
    from checkpoints import resolve
    from export import fp8_qdq

    name = "flux_schnell_transformer"
    fp8 = tb.Fp8Inputs(
        checkpoint_dirs={"flux-schnell": resolve("flux-schnell", "tiny", stack_dirs.checkpoints).path},
        calibration=fp8_qdq.Calibration(prompts=("a fox",), steps=1, width=64, height=64),
        qdq_dir=tmp_path / "qdq",
    )
    out, lines = tmp_path / "engines", []
    kw = {"components": [name], "capabilities": ["9.0"], "trt_version": TRT_VERSION, "fp8": fp8, "log": lines.append}
    result = tb.build_family_engines("flux", stack_dirs.onnx, out, **kw)
    assert result["last_run"] == {name: {"9.0": tb.BUILT}}
    qdq_graph = tmp_path / "qdq" / name / "model.onnx"
    qdq_entry = mf.load(tmp_path / "qdq")["models"][name]
    network, config = fake_trt.built[0]
    assert [t.name for t in network.inputs] == [s.name for s in FAMILIES["flux"].components[2].inputs]
    assert config.flags == ["BF16"]  # FP8 comes from the graph's Q/DQ, not from a flag
    plan = mf.load(out)["models"][name]["plans"]["9.0"]
    assert plan["fp8_qdq_nodes"] == 4 * qdq_entry["gemms"] > 0 and plan["precision"] == "fp8"
    assert plan["onnx_sha256"] == qdq_entry["sha256"] == file_sha256(qdq_graph)  # keyed by the Q/DQ graph
    assert any("[fp8_qdq]" in line and "calibrating" in line for line in lines)

    again = tb.build_family_engines("flux", stack_dirs.onnx, out, **kw)
    assert again["last_run"] == {name: {"9.0": tb.UNCHANGED}} and len(fake_trt.built) == 1
    # Other calibration settings: a new Q/DQ graph, hence a new plan.
    other = dataclasses.replace(fp8, calibration=dataclasses.replace(fp8.calibration, steps=2))
    assert tb.build_family_engines("flux", stack_dirs.onnx, out, **{**kw, "fp8": other})["last_run"] == {
        name: {"9.0": tb.BUILT}
    }


def test_refit_engine_resets_every_weight_to_base(fake_trt: types.ModuleType, tmp_path: Path) -> None:
    base = [np.zeros(s, np.float32) for s in ((16, 32), (32,), (32, 8), (8,))]
    onnx_path = _mlp(tmp_path / "mlp.onnx", *base)
    plan = tmp_path / "mlp.plan"
    tb.build_engine(onnx_path, plan, {"x": ((1, 16),) * 3}, timing_cache_path=tmp_path / "t", refittable=True)

    def engine_weights() -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in json.loads(plan.read_bytes())["weights"].items()}

    lora_a = {"w1": np.ones((16, 32), np.float32), "b2": np.ones(8, np.float32)}
    lora_b = {"w1": np.full((16, 32), 2.0, np.float32)}
    tb.refit_engine(plan, lora_a, base_onnx=onnx_path, log=lambda _: None)
    assert engine_weights()["b2"].tolist() == [1.0] * 8
    tb.refit_engine(plan, lora_b, base_onnx=onnx_path, log=lambda _: None)
    after_b = engine_weights()
    assert (after_b["w1"] == 2).all() and (after_b["b2"] == 0).all(), "A's b2 must not survive into B"
    tb.refit_engine(plan, {}, base_onnx=onnx_path, log=lambda _: None)
    assert all((w == 0).all() for w in engine_weights().values()), "back to A's base: nothing of B left"
    with pytest.raises(tb.BuildError, match="neither a new nor a base value"):
        tb.refit_engine(plan, lora_a)  # no base given and lora_a is not every weight


# --- a real engine (TensorRT + CUDA only) ---------------------------------------------------------------------------


def _mlp(path: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> Path:
    """x[batch, 16] -> relu(x w1 + b1) w2 + b2 -> y[batch, 8], weights as named initializers."""
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def _tensorrt(plan: Path, x: np.ndarray) -> np.ndarray:
    import tensorrt as trt
    import torch

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    x_gpu = torch.from_numpy(x).cuda()
    context.set_input_shape("x", tuple(x.shape))
    y_gpu = torch.empty(tuple(context.get_tensor_shape("y")), dtype=torch.float32, device="cuda")
    context.set_tensor_address("x", x_gpu.data_ptr())
    context.set_tensor_address("y", y_gpu.data_ptr())
    stream = torch.cuda.current_stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return y_gpu.cpu().numpy()


def test_engine_matches_onnxruntime_and_refits_from_base(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (design.md: it cannot be, on the CPU)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT builds on a CUDA GPU and there is none here")
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.3, s).astype(np.float32) for s in ((16, 32), (32,), (32, 8), (8,))]
    onnx_path = _mlp(tmp_path / "mlp.onnx", *weights)
    plan, cache, lines = tmp_path / "mlp.plan", tmp_path / "timing.cache", []
    profiles = {"x": ((1, 16), (2, 16), (4, 16))}
    record = tb.build_engine(
        onnx_path, plan, profiles, precision="bf16", timing_cache_path=cache, refittable=True, log=lines.append
    )
    assert record["bytes"] == plan.stat().st_size > 0 and cache.stat().st_size > 0
    assert record["flags"]["builder_flags"] == ["BF16", "REFIT"] and record["compute_capability"]
    assert any("done in" in line for line in lines), "the progress monitor reported phases"
    x = rng.normal(0, 1, (3, 16)).astype(np.float32)
    np.testing.assert_allclose(_tensorrt(plan, x), _onnxruntime(onnx_path, x), rtol=5e-2, atol=5e-2)

    # A -> B -> A: refit a new w1, then the base again; each result equals the graph with those weights.
    w1_b = weights[0] + rng.normal(0, 0.3, weights[0].shape).astype(np.float32)
    tb.refit_engine(plan, {"w1": w1_b}, base_onnx=onnx_path, log=lines.append)
    other = _mlp(tmp_path / "mlp_b.onnx", w1_b, *weights[1:])
    np.testing.assert_allclose(_tensorrt(plan, x), _onnxruntime(other, x), rtol=5e-2, atol=5e-2)
    tb.refit_engine(plan, {}, base_onnx=onnx_path, log=lines.append)
    np.testing.assert_allclose(_tensorrt(plan, x), _onnxruntime(onnx_path, x), rtol=5e-2, atol=5e-2)
