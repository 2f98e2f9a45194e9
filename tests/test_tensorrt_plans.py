"""Real TensorRT plans of every exported component of every family, built by TensorRT for RTX on the CPU.

TensorRT for RTX (the CPU install's builder, export/tensorrt_flavours.py) runs the same open-source ONNX parser as
the datacenter TensorRT and builds strongly typed plans ahead of time for a named GPU (8.9 here: Ada, the closest
to Hopper it targets). Running a plan needs a GPU: these tests check that TensorRT takes each graph, with the
registry's profiles, and what the plan holds as far as TensorRT shows it at build time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import fp8_qdq
from export import manifest as mf
from export import tensorrt_build as tb
from export import tensorrt_flavours as flavours
from registry import FAMILIES
from stack.build import BuildDirs

TARGET = "8.9"


@pytest.fixture(scope="module")
def rtx() -> flavours.TensorRT:
    return flavours.load("trtrtx")  # installed by `make test` (pyproject's dev extra): never skipped


def _exported(family: str, onnx_dir: Path) -> list[str]:
    models = mf.load(onnx_dir)["models"]
    return [c.triton_model for c in FAMILIES[family].components if c.triton_model in models]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_exported_component_builds_a_plan(
    family: str, rtx: flavours.TensorRT, model_repository: Path, stack_dirs: BuildDirs, tmp_path: Path
) -> None:
    """Each component's FP32 export (what the CPU profile serves) parses and builds with its registry profile (the
    VAE's own, capped); a rerun builds nothing. Without REFIT: TensorRT for RTX cannot build refittable plans
    without a GPU (test_refittable_plans_need_a_gpu_with_tensorrt_for_rtx), and it keeps no timing cache."""
    names = _exported(family, stack_dirs.onnx)
    graph_runtimes = [
        c for c in FAMILIES[family].components if {r for _, r in c.backends} & {"onnxruntime", "tensorrt"}
    ]
    assert names and len(names) == len(graph_runtimes), "every component that runs from a graph is exported"
    out, lines = tmp_path / "plans", []
    kw = {
        "components": names,
        "precisions": dict.fromkeys(names, "fp32"),
        "capabilities": [TARGET],
        "tensorrt": rtx,
        "refit": False,
        "log": lines.append,
    }
    result = tb.build_family_engines(family, stack_dirs.onnx, out, **kw)
    assert result["last_run"] == {name: {TARGET: tb.BUILT} for name in names}
    fam = FAMILIES[family]
    for component in fam.components:
        if component.triton_model not in names:
            continue
        entry = result["models"][component.triton_model]["plans"][TARGET]
        plan = out / component.triton_model / "1" / f"model.sm89.trtrtx{rtx.version}.plan"
        assert entry["file"] == plan.name and plan.stat().st_size == entry["bytes"] > 0
        assert entry["tensorrt"] == {"flavour": "trtrtx", "version": rtx.version}
        assert entry["flags"]["strongly_typed"] and entry["weights"] == "FP32"
        onnx_path = stack_dirs.onnx / component.triton_model / "model.onnx"
        expected = tb.input_profiles(component, fam, onnx_path)
        assert entry["profiles"] == tb._json_profiles(expected)
        assert entry["flags"]["builder_flags"] == [] and entry["refittable"] is False
        assert entry["network"]["layers"] > 0
    assert not (out / tb.TIMING_CACHE).exists()  # TensorRT for RTX: no-ops
    seconds = {n: result["models"][n]["plans"][TARGET]["seconds"] for n in names}
    print(f"{family}: {len(names)} plans built by TensorRT for RTX {rtx.version}: {seconds}")
    again = tb.build_family_engines(family, stack_dirs.onnx, out, **kw)
    assert again["last_run"] == {name: {TARGET: tb.UNCHANGED} for name in names}


def _as_exported(path: Path) -> Path:
    """What torch's exporter writes for `x.split(2, dim=1)[0].mean(-1)` and a Linear: a sequence split, and a
    reduction whose axes are computed from constants."""
    h = onnx.helper
    graph = h.make_graph(
        [
            h.make_node("Constant", [], ["sizes"], value=onnx.numpy_helper.from_array(np.array([2, 2], np.int64))),
            h.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=1),
            h.make_node("Constant", [], ["zero"], value=onnx.numpy_helper.from_array(np.array(0, np.int64))),
            h.make_node("SequenceAt", ["seq", "zero"], ["first"]),
            h.make_node("Constant", [], ["axis"], value=onnx.numpy_helper.from_array(np.array([-1], np.int64))),
            h.make_node("Constant", [], ["shape"], value=onnx.numpy_helper.from_array(np.array([1], np.int64))),
            h.make_node("Reshape", ["axis", "shape"], ["axes"]),
            h.make_node("ReduceMean", ["first", "axes"], ["mean"]),
            h.make_node("MatMul", ["x", "weight"], ["y"]),
        ],
        "as_exported",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [
            h.make_tensor_value_info("mean", onnx.TensorProto.FLOAT, ["batch", 1]),
            h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4]),
        ],
        [onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "weight")],
    )
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    return path


def test_what_the_parser_refuses_and_the_cleanup_that_makes_it_build(
    rtx: flavours.TensorRT, model_repository: Path, stack_dirs: BuildDirs, tmp_path: Path
) -> None:
    """Before export/graph_cleanup.py the parser refuses the exporter's sequences (the build fails with the
    parser's own message and writes nothing); after it, the same graph builds and computes the same values."""
    import onnxruntime as ort

    from export import graph_cleanup

    raw = _as_exported(tmp_path / "raw.onnx")
    build = {
        "profiles": {"x": ((1, 4), (2, 4), (4, 4))},
        "precision": "fp32",
        "timing_cache_path": tmp_path / "t",
        "compute_capability": TARGET,
        "tensorrt": rtx,
        "log": lambda _: None,
    }
    with pytest.raises(tb.BuildError, match=r"TensorRT's ONNX parser \(trtrtx .*\) failed:\n.*SplitToSequence"):
        tb.build_engine(raw, tmp_path / "raw.plan", **build)
    assert not (tmp_path / "raw.plan").exists()

    model = onnx.load(str(raw))
    assert graph_cleanup.clean(model) == {"folded": 1, "splits": 1, "removed_constants": 4}
    assert {n.op_type for n in model.graph.node} == {"Constant", "Split", "ReduceMean", "MatMul"}
    cleaned = tmp_path / "cleaned.onnx"
    onnx.save(model, str(cleaned))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    before, after = (ort.InferenceSession(str(p)).run(None, {"x": x}) for p in (raw, cleaned))
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert tb.build_engine(cleaned, tmp_path / "cleaned.plan", **build)["bytes"] > 0

    with pytest.raises(tb.BuildError, match="builds for .*not 9.0.*Hopper plans come from the datacenter TensorRT"):
        _build_one(rtx, "flux", "flux_vae_decoder", stack_dirs.onnx, tmp_path, "fp32", capability="9.0")


def test_refittable_plans_need_a_gpu_with_tensorrt_for_rtx(
    rtx: flavours.TensorRT, model_repository: Path, stack_dirs: BuildDirs, tmp_path: Path
) -> None:
    """The components LoRA weights reach are refittable by default (the Qwen-Image transformers); TensorRT for RTX
    fails to build any refittable plan on this machine, and the error carries TensorRT's message and says where such
    plans are built."""
    clip = next(c for c in FAMILIES["flux"].components if c.triton_model == "flux_text_encoder")
    assert {c.triton_model for f in FAMILIES.values() for c in f.components if tb.refittable(c, f)} == {
        "qwen_image_transformer",
        "qwen_image_fast_transformer",
    }
    with pytest.raises(tb.BuildError, match=r"(?s)MyelinCheckException.*refittable plans are built by the datacenter"):
        tb.build_engine(  # the smallest graph: the failure is REFIT's, not the graph's (it builds without REFIT)
            stack_dirs.onnx / "flux_text_encoder" / "model.onnx",
            tmp_path / "plans" / "clip.plan",
            tb.input_profiles(clip, FAMILIES["flux"], stack_dirs.onnx / "flux_text_encoder" / "model.onnx"),
            precision="fp32",
            timing_cache_path=tmp_path / "timing.cache",
            compute_capability=TARGET,
            refittable=True,
            tensorrt=rtx,
            log=lambda _: None,
        )
    assert not (tmp_path / "plans" / "clip.plan").exists()


def _build_one(
    rtx: flavours.TensorRT,
    family: str,
    name: str,
    onnx_dir: Path,
    tmp_path: Path,
    precision: str | None = None,
    capability: str = TARGET,
) -> dict:
    """One component's plan into tmp_path/plans; precision None: the registry's."""
    return tb.build_family_engines(
        family,
        onnx_dir,
        tmp_path / "plans",
        components=[name],
        precisions={name: precision} if precision else None,
        capabilities=[capability],
        tensorrt=rtx,
        log=lambda _: None,
    )


def test_bf16_plan_from_the_bf16_export(rtx: flavours.TensorRT, vae_exports: Path, tmp_path: Path) -> None:
    """The registry's precision for the VAE (bf16) builds from its BF16 export: BF16 weights, the BF16 I/O that the
    GPU config declares, its own capped profile, and BF16 GEMMs in the engine TensorRT lists."""
    result = _build_one(rtx, "flux", "flux_vae_decoder", vae_exports, tmp_path)
    entry = result["models"]["flux_vae_decoder"]["plans"][TARGET]
    assert entry["precision"] == "bf16" and entry["weights"] == "BF16" and entry["onnx"].startswith("bf16/")
    assert entry["io_types"] == {"latent": "BF16", "sample": "BF16"}
    assert entry["narrower_than_family"] == {"latent_height": [168, 256], "latent_width": [168, 256]}
    assert entry["profiles"]["latent"][2][2:] == [168, 168]
    gemms = entry["engine_layers"]["gemms"]
    assert gemms and set(gemms) == {"BF16"}, gemms  # the attention's matmuls; nothing fell back to FP32


def _gemm_nodes(graph: onnx.GraphProto) -> set[str]:
    """ONNX names of the GEMMs whose activation comes through an FP8 Q/DQ pair (export/fp8_qdq.py's x_dq)."""
    return {n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[0].endswith(".x_dq")}


def _fused_members(layer: str) -> set[str]:
    """TensorRT's name of a fused layer -> the ONNX nodes in it: 'node_MatMul_3+node_MatMul_1_myl0_21'."""
    return set(re.sub(r"_myl\d+_\d+$", "", layer).split("+"))


def test_fp8_plan_runs_its_gemms_in_fp8(
    rtx: flavours.TensorRT, model_repository: Path, stack_dirs: BuildDirs, tmp_path: Path
) -> None:
    """The registry's FP8 transformer: exported in BF16, calibrated and given FP8 Q/DQ (export/fp8_qdq.py), built;
    every GEMM the Q/DQ graph quantizes is an FP8 GEMM (FP8 inputs and weights) in the engine TensorRT lists, and
    nothing else is. A rerun reuses the Q/DQ graph and the plan (tests/test_fp8_qdq.py: what rebuilds the graph)."""
    from checkpoints import resolve
    from export.family import export_family

    name = "flux_schnell_transformer"
    checkpoints = {"flux-schnell": resolve("flux-schnell", "tiny", stack_dirs.checkpoints).path}
    onnx_dir = tmp_path / "onnx"
    export_family("flux", checkpoints, onnx_dir, dtype="bfloat16", components=[name])
    fp8 = tb.Fp8Inputs(
        checkpoint_dirs=checkpoints, calibration=fp8_qdq.Calibration(prompts=("a fox",), steps=1, width=64, height=64)
    )
    out, lines = tmp_path / "plans", []
    kw = {"components": [name], "capabilities": [TARGET], "tensorrt": rtx, "fp8": fp8, "log": lines.append}
    result = tb.build_family_engines("flux", onnx_dir, out, **kw)
    assert result["last_run"] == {name: {TARGET: tb.BUILT}}
    entry = result["models"][name]["plans"][TARGET]
    qdq_path = onnx_dir / fp8_qdq.QDQ_DIR / name / "model.onnx"
    qdq_entry = mf.load(onnx_dir / fp8_qdq.QDQ_DIR)["models"][name]
    assert entry["precision"] == "fp8" and entry["weights"] == "BF16" and entry["onnx_sha256"] == qdq_entry["sha256"]
    assert entry["fp8_qdq_nodes"] == 4 * qdq_entry["gemms"] > 0
    assert entry["network"]["fp8_matrix_multiplies"] == qdq_entry["gemms"]

    quantized = _gemm_nodes(onnx.load(str(qdq_path), load_external_data=False).graph)
    assert len(quantized) == qdq_entry["gemms"]
    layers = entry["engine_layers"]
    in_fp8 = set().union(*(_fused_members(layer) for layer in layers["fp8_gemms"]))
    assert in_fp8 == quantized, (sorted(quantized - in_fp8), sorted(in_fp8 - quantized))
    assert layers["gemms"]["FP8"] == len(layers["fp8_gemms"]) and set(layers["gemms"]) <= {"FP8", "BF16"}

    again = tb.build_family_engines("flux", onnx_dir, out, **kw)
    assert again["last_run"] == {name: {TARGET: tb.UNCHANGED}}
