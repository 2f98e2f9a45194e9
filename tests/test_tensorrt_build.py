"""export/tensorrt_build.py on the CPU: engine profiles for every registry component (checked against the exported
ONNX), plan names, the graph-type and FP8 preconditions, refit bookkeeping and the plan manifest's stale/fresh
decisions.

What is not TensorRT here, and why: the manifest's decisions are tested with `FakeBuilder`, a stand-in build step
(a real build per decision would cost seconds each; tests/test_tensorrt_plans.py builds every component for real);
refitting needs a deserialized engine, hence a GPU, so `refit_engine` runs against a stand-in runtime and refitter.
One test runs and refits a real engine; it needs the datacenter TensorRT and a CUDA GPU."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from artifacts import file_sha256
from export import manifest as mf
from export import tensorrt_build as tb
from export import tensorrt_flavours
from export.tensorrt_flavours import TensorRT
from model_repository import plans
from registry import FAMILIES, Component, Dim
from stack.build import BuildDirs

ALL_COMPONENTS = [pytest.param(f, c, id=c.triton_model) for f in FAMILIES.values() for c in f.components]
# What the manifest's decisions see of a TensorRT: its flavour and version (FakeBuilder never touches a module).
DATACENTER = TensorRT("trt", "10.9.0", module=None)


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


def test_plan_names_carry_gpu_and_tensorrt_flavour_and_version() -> None:
    assert plans.plan_filename("trt", "10.9.0", "9.0") == "model.sm90.trt10.9.0.plan"
    assert plans.plan_filename("trt", "10.13.2.6", "8.9") == "model.sm89.trt10.13.2.6.plan"
    assert plans.plan_filename("trt", "10.9.0", "10.0") == "model.sm100.trt10.9.0.plan"
    assert plans.plan_filename("trtrtx", "1.7.1.116", "8.9") == "model.sm89.trtrtx1.7.1.116.plan"
    assert plans.plan_filename("trt", "10.9.0", "9.0") != plans.plan_filename("trt", "10.10.0", "9.0")
    # The serving config only ever names the datacenter TensorRT's plans: one built by TensorRT for RTX never loads.
    assert all(".trt1" in f for f in plans.cc_model_filenames("10.13.3.9", ["9.0", "8.9"]).values())
    for flavour, version, cc in (
        ("trt", "10.9", "90"),
        ("trt", "ten", "9.0"),
        ("trt", "10.9.0", "9"),
        ("x", "1", "9.0"),
    ):
        with pytest.raises(ValueError):
            plans.plan_filename(flavour, version, cc)


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
    where = {"timing_cache_path": tmp_path / "c", "compute_capability": "8.9"}
    with pytest.raises(tb.BuildError, match="FP8 QuantizeLinear/DequantizeLinear nodes .* it has none.*fp8_qdq.py"):
        tb.build_engine(onnx_path, tmp_path / "x.plan", profiles, precision="fp8", **where)
    with pytest.raises(ValueError, match="precision 'fp16'"):
        tb.build_engine(onnx_path, tmp_path / "x.plan", profiles, precision="fp16", **where)
    # Strongly typed, a precision is the graph's: the FP32 export is no bf16 graph, and I/O types are checked.
    with pytest.raises(tb.BuildError, match="bf16 plan needs BF16 weights, the graph has {'FP32'"):
        tb.build_engine(onnx_path, tmp_path / "x.plan", profiles, precision="bf16", **where)
    with pytest.raises(tb.BuildError, match="hidden_states is FP32 \\(config: BF16\\)"):
        io_types = tb.plan_io_types(transformer, "fp8")
        tb.build_engine(onnx_path, tmp_path / "x.plan", profiles, precision="fp32", io_types=io_types, **where)
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


# --- a family's plans: manifest decisions with a stand-in build step ------------------------------------------------


class FakeBuilder:
    """Stands in for build_engine (the decisions below would otherwise cost a real build each): writes a plan whose
    bytes depend on its inputs, records each call."""

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
def vae_onnx_dir(tmp_path: Path, vae_exports: Path) -> Path:
    """vae_exports, copied: editable per test."""
    shutil.copytree(vae_exports, tmp_path / "onnx")
    return tmp_path / "onnx"


def _build(onnx_dir: Path, out_dir: Path, fake: FakeBuilder, **kw) -> dict:
    kw = {"capabilities": ["9.0"], "tensorrt": DATACENTER, **kw}
    return tb.build_family_engines("flux", onnx_dir, out_dir, components=[VAE], builder=fake, log=lambda _: None, **kw)


def test_builds_once_then_skips(vae_onnx_dir: Path, tmp_path: Path) -> None:
    out, fake = tmp_path / "engines", FakeBuilder()
    result = _build(vae_onnx_dir, out, fake)
    assert result["last_run"] == {VAE: {"9.0": tb.BUILT}}
    (call,) = fake.calls
    plan = out / VAE / "1" / "model.sm90.trt10.9.0.plan"
    assert call["out"] == plan and plan.is_file()
    assert call["onnx"] == vae_onnx_dir / "bf16" / VAE / "model.onnx"  # the registry's bf16: the BF16 export
    assert call["timing_cache_path"] == out / "timing.cache"  # one cache for every component
    assert call["precision"] == "bf16" and call["refittable"] is False and call["optimization_level"] == 3
    assert call["io_types"] == {"latent": "BF16", "sample": "BF16"} and call["compute_capability"] == "9.0"
    assert call["tensorrt"] is DATACENTER
    entry = mf.load(out)["models"][VAE]["plans"]["9.0"]
    assert entry["file"] == plan.name and entry["sha256"] == file_sha256(plan)
    assert entry["onnx"] == f"bf16/{VAE}/model.onnx"
    assert entry["onnx_sha256"] == mf.load(vae_onnx_dir / "bf16")["models"][VAE]["sha256"]
    assert entry["narrower_than_family"] == {"latent_height": [168, 256], "latent_width": [168, 256]}

    again = _build(vae_onnx_dir, out, fake)
    assert again["last_run"] == {VAE: {"9.0": tb.UNCHANGED}} and len(fake.calls) == 1
    # An FP32 plan is built from the FP32 export, with the registry's FP32 I/O.
    _build(vae_onnx_dir, out, fake, precisions={VAE: "fp32"})
    assert fake.calls[-1]["onnx"] == vae_onnx_dir / VAE / "model.onnx"
    assert fake.calls[-1]["io_types"] == {"latent": "FP32", "sample": "FP32"}


def _edit_export_entry(onnx_dir: Path, field: str, value: str) -> None:
    folder = onnx_dir / "bf16"
    manifest = mf.load(folder)
    manifest["models"][VAE][field] = value
    mf.save(folder, manifest)


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
        "trt_version": {"tensorrt": TensorRT("trt", "10.10.0", module=None)},
        "flavour": {"tensorrt": TensorRT("trtrtx", "10.9.0", module=None)},
        "compute_capability": {"capabilities": ["8.9"]},
        "flags": {"optimization_level": 5},
    }.get(change, {})


CHANGES = ["onnx_sha256", "export_key", "precision", "profile", "trt_version", "flavour", "compute_capability", "flags"]


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
    elif change == "flavour":  # same version number, other TensorRT: another name, so neither loads the other's
        assert plans == ["model.sm90.trtrtx10.9.0.plan"]
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


def test_what_build_family_engines_refuses(
    model_repository: Path, stack_dirs: BuildDirs, vae_onnx_dir: Path, tmp_path: Path
) -> None:
    fake = FakeBuilder()

    def build(onnx_dir: Path = stack_dirs.onnx, **kw) -> dict:
        kw = {"capabilities": ["9.0"], "tensorrt": DATACENTER, "builder": fake, "log": lambda _: None, **kw}
        return tb.build_family_engines("flux", onnx_dir, tmp_path / "engines", **kw)

    # Today no component's GPU backend is "tensorrt": nothing to build, and TensorRT is not needed to say so.
    assert build()["last_run"] == {} and not fake.calls
    # The registry's FP8 transformer without what calibrates its Q/DQ graph (the checkpoint whose pipeline runs)
    # fails before any plan is built, the VAE listed first included.
    fp32 = {"flux_schnell_transformer": "fp32"}
    with pytest.raises(tb.BuildError, match=r"precision 'fp8' builds from an FP8 Q/DQ graph.*Fp8Inputs"):
        build(components=[VAE, "flux_schnell_transformer"], precisions={VAE: "fp32"})
    with pytest.raises(tb.BuildError, match="bf16 plans are built from the bfloat16 export and there is none"):
        build(components=[VAE])  # the test stack has FP32 exports only
    with pytest.raises(tb.BuildError, match="Fp8Inputs.*'flux-schnell'"):  # another checkpoint's folder is no help
        build(components=["flux_schnell_transformer"], fp8=tb.Fp8Inputs({"flux-dev": stack_dirs.checkpoints}))
    assert not fake.calls
    built = build(components=["flux_schnell_transformer"], precisions=fp32)
    assert built["last_run"] == {"flux_schnell_transformer": {"9.0": tb.BUILT}}
    with pytest.raises(ValueError, match="no component of family flux"):
        build(components=["qwen_image_transformer"])
    with pytest.raises(ValueError, match="precision 'fp16'"):
        build(components=[VAE], precisions={VAE: "fp16"})
    # TensorRT for RTX builds ahead of time: for a GPU it is told, never "this one".
    rtx = tensorrt_flavours.load("trtrtx")
    with pytest.raises(tb.BuildError, match="TensorRT for RTX builds ahead of time for a named GPU"):
        build(vae_onnx_dir, components=[VAE], capabilities=None, tensorrt=rtx)
    with pytest.raises(tb.BuildError, match="no exported ONNX|there is none"):
        tb.build_family_engines(
            "qwen-image-edit",
            stack_dirs.onnx,
            tmp_path / "engines",
            components=["qwen_edit_text_encoder"],  # torch on every profile: never exported
            precisions={"qwen_edit_text_encoder": "fp32"},
            capabilities=["9.0"],
            tensorrt=DATACENTER,
            builder=fake,
        )


# --- refit_engine against a stand-in runtime (refitting deserializes the plan: a GPU) -------------------------------


def _stand_in_runtime() -> types.ModuleType:
    """The slice of TensorRT's runtime API that refit_engine calls (Runtime, Refitter, Weights), on a "plan" that is
    JSON of its weights. It checks refit_engine's bookkeeping (every weight set from base or new values), not
    TensorRT: refitting a real plan is the GPU test below."""
    trt = types.ModuleType("tensorrt")
    trt.float32, trt.bfloat16 = "FLOAT", "BF16"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.nptype = lambda dtype: {"FLOAT": np.float32}[dtype]

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

    trt.Weights, trt.Refitter = Weights, Refitter
    trt.Runtime = type(
        "Runtime", (), {"__init__": lambda self, logger: None, "deserialize_cuda_engine": lambda self, b: Engine(b)}
    )
    return trt


def test_refit_engine_resets_every_weight_to_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in = TensorRT("trt", "10.9.0", _stand_in_runtime())
    monkeypatch.setattr(tb, "_tensorrt", lambda tensorrt: stand_in)
    base = [np.zeros(s, np.float32) for s in ((16, 32), (32,), (32, 8), (8,))]
    onnx_path = _mlp(tmp_path / "mlp.onnx", *base)
    plan = tmp_path / "mlp.plan"
    plan.write_text(
        json.dumps({"weights": {n: w.tolist() for n, w in zip(("w1", "b1", "w2", "b2"), base, strict=True)}})
    )

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
    pytest.importorskip("tensorrt", reason="the datacenter TensorRT is not installed here (design.md: it cannot be)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("running a plan needs a CUDA GPU and there is none here")
    major, minor = torch.cuda.get_device_capability()
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.3, s).astype(np.float32) for s in ((16, 32), (32,), (32, 8), (8,))]
    onnx_path = _mlp(tmp_path / "mlp.onnx", *weights)
    plan, cache, lines = tmp_path / "mlp.plan", tmp_path / "timing.cache", []
    profiles = {"x": ((1, 16), (2, 16), (4, 16))}
    record = tb.build_engine(
        onnx_path,
        plan,
        profiles,
        precision="fp32",
        timing_cache_path=cache,
        compute_capability=f"{major}.{minor}",
        refittable=True,
        log=lines.append,
    )
    assert record["bytes"] == plan.stat().st_size > 0 and cache.stat().st_size > 0
    assert record["flags"]["builder_flags"] == ["REFIT"] and record["tensorrt"]["flavour"] == "trt"
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
