"""config.pbtxt generated from the registry, per serving profile, and the laid-out repository."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from model_repository.config import component_config, pipeline_config
from registry import FAMILIES, SOURCE_PARAMETER_PREFIX

FLUX = FAMILIES["flux"]


@pytest.mark.parametrize("component", FLUX.components, ids=lambda c: c.triton_model)
def test_component_configs_follow_the_registry(component) -> None:
    cpu = component_config(component, "cpu")
    assert f'name: "{component.triton_model}"' in cpu and 'backend: "python"' in cpu
    assert "kind: KIND_CPU" in cpu and "max_batch_size: 0" in cpu
    assert "version_policy: { latest: { num_versions: 1 } }" in cpu
    for spec in component.inputs + component.outputs:
        assert f'name: "{spec.name}" data_type: TYPE_{spec.dtype}' in cpu
    assert 'key: "precision" value: { string_value: "fp32" }' in cpu

    gpu = component_config(component, "gpu")
    assert "kind: KIND_GPU" in gpu and 'key: "runtime" value: { string_value: "torch" }' in gpu
    assert f'key: "precision" value: {{ string_value: "{component.precision}" }}' in gpu
    for spec in component.inputs + component.outputs:
        # float tensors cross between GPU components in BF16, the precision the modules run in
        dtype = "BF16" if spec.dtype == "FP32" else spec.dtype
        assert f'name: "{spec.name}" data_type: TYPE_{dtype}' in gpu


def test_transformers_run_fp8_and_compiled_on_the_gpu() -> None:
    for component in FLUX.components:
        gpu = component_config(component, "gpu")
        if component.role == "transformer":
            assert (
                'string_value: "fp8"' in gpu
                and 'key: "accelerations" value: { string_value: "fuse_qkv,compile,cuda_graphs" }' in gpu
            )
        else:
            assert "accelerations" not in gpu and 'string_value: "bf16"' in gpu


def test_tensorrt_components_are_plans_keyed_by_gpu() -> None:
    trt = dataclasses.replace(FLUX.components[0], backends=(("cpu", "onnxruntime"), ("gpu", "tensorrt")))
    gpu = component_config(trt, "gpu")
    # A plan never loads on a GPU it was not built for: one file per compute capability.
    assert 'platform: "tensorrt_plan"' in gpu and 'cc_model_filenames [\n  { key: "9.0"' in gpu
    # ... and for the TensorRT it was built with (the registry's pin, the one in triton_modal.py's image).
    from registry import TENSORRT_VERSION

    assert f'value: "model.sm90.trt{TENSORRT_VERSION}.plan"' in gpu


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="profile"):
        component_config(FLUX.components[0], "tpu")


def test_pipeline_config_carries_the_request_contract_and_sources() -> None:
    # BYTES specs would be TYPE_STRING in a config; the contract has none left (see registry), but the spelling holds.
    from model_repository.config import data_type
    from registry import TensorSpec

    assert data_type(TensorSpec("T", "BYTES", (1,))) == "TYPE_STRING"
    text = pipeline_config(FLUX, FLUX.pipelines[0], "cpu", {SOURCE_PARAMETER_PREFIX + "flux-dev": "hub:x@y"})
    assert 'name: "flux_pipeline"' in text
    assert 'name: "PROMPT" data_type: TYPE_UINT8 dims: [ -1 ]' in text  # text is UTF-8 bytes
    assert 'name: "IMAGES" data_type: TYPE_UINT8 dims: [ -1, -1, -1, 3 ]' in text
    assert 'key: "source.flux-dev" value: { string_value: "hub:x@y" }' in text


def test_laid_out_repository(model_repository: Path) -> None:
    names = sorted(p.name for p in model_repository.iterdir() if (p / "config.pbtxt").exists())
    expected = [c.triton_model for f in FAMILIES.values() for c in f.components]
    expected += [p.triton_model for f in FAMILIES.values() for p in f.pipelines]
    assert names == sorted(expected)
    for family in FAMILIES.values():
        for component in family.components:
            versions = sorted(int(p.name) for p in (model_repository / component.triton_model).iterdir() if p.is_dir())
            version = model_repository / component.triton_model / str(versions[-1])
            if component.backend("cpu") == "onnxruntime":
                assert (version / "model.onnx").stat().st_size > 0
                assert "model_repository.component_model" in (version / "model.py").read_text()
            else:  # torch on the CPU too (Qwen2.5-VL): loads its checkpoint subfolder, nothing exported
                assert "model_repository.torch_component_model" in (version / "model.py").read_text()
                assert not (version / "model.onnx").exists()
    pipeline = (model_repository / "flux_pipeline" / "config.pbtxt").read_text()
    assert 'key: "checkpoints" value: { string_value: "flux-schnell,flux-dev" }' in pipeline
    # Qwen-Image-Edit's two pipeline models, one per task, over the same components.
    for name, task in (("qwen_edit_pipeline", "edit"), ("qwen_inpaint_pipeline", "inpaint")):
        config = (model_repository / name / "config.pbtxt").read_text()
        assert f'key: "task" value: {{ string_value: "{task}" }}' in config
    edit = (model_repository / "qwen_edit_pipeline" / "config.pbtxt").read_text()
    assert 'name: "REFERENCE_IMAGE_2" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] optional: true' in edit
    # The fast transformer is the base one with the Lightning LoRA merged at build time: its own graph.
    fast = max((model_repository / "qwen_image_fast_transformer").glob("*/model.onnx"))
    base = max((model_repository / "qwen_image_transformer").glob("*/model.onnx"))
    assert fast.read_bytes() != base.read_bytes()


def test_gpu_layout_loads_torch_modules_from_their_checkpoints(
    stack_dirs, model_repository: Path, tmp_path: Path
) -> None:
    from checkpoints import resolve
    from model_repository.layout import CheckpointSource, build_repository

    sources = {}
    for key in ("flux-schnell", "flux-dev"):
        r = resolve(key, "tiny", stack_dirs.checkpoints)
        sources[key] = CheckpointSource(r.path, r.label)
    names = build_repository(tmp_path, stack_dirs.onnx, sources, profile="gpu")
    assert "flux_pipeline" in names
    for component in FLUX.components:
        version = tmp_path / component.triton_model / "1"
        assert "model_repository.torch_component_model" in (version / "model.py").read_text()
        assert not (version / "model.onnx").exists()
        config = (tmp_path / component.triton_model / "config.pbtxt").read_text()
        assert f'string_value: "{sources[component.checkpoints[0]].path}"' in config
    assert 'key: "profile" value: { string_value: "gpu" }' in (tmp_path / "flux_pipeline" / "config.pbtxt").read_text()


def test_registry_accelerations_are_known_to_the_torch_runtime() -> None:
    from model_repository.accelerate import Acceleration

    for family in FAMILIES.values():
        for component in family.components:
            how = Acceleration.of(set(component.accelerations), component.precision, component.fp8_layers)
            # CUDA graphs are a torch.compile mode: naming them compiles the module.
            assert how.compile == bool({"compile", "cuda_graphs"} & set(component.accelerations))
            assert how.fp8 == (component.precision == "fp8")
            # The FP8 layer choice is the registry's, one for the torch path and the TensorRT Q/DQ graph.
            assert how.fp8_layers == (component.fp8_layers if how.fp8 else None)
    with pytest.raises(ValueError, match="unknown accelerations"):
        Acceleration.of({"tensorrt_magic"}, "bf16")
    with pytest.raises(ValueError, match="needs fp8_layers"):
        Acceleration.of(set(), "fp8")


def test_tensorrt_components_get_their_plans_laid_out(stack_dirs, tmp_path: Path) -> None:
    """A component the registry runs as TensorRT on the GPU gets the plans the engine builder wrote, one per compute
    capability, under the names its config's cc_model_filenames gives; without plans the layout refuses."""
    import registry.catalog as catalog
    from checkpoints import resolve
    from model_repository import config
    from model_repository.layout import CheckpointSource, build_repository

    flux = FAMILIES["flux"]
    vae = next(c for c in flux.components if c.role == "vae")
    trt_vae = dataclasses.replace(vae, backends=(("cpu", "onnxruntime"), ("gpu", "tensorrt")))
    family = dataclasses.replace(flux, components=tuple(trt_vae if c is vae else c for c in flux.components))
    r = resolve("flux-schnell", "tiny", stack_dirs.checkpoints)
    sources = {"flux-schnell": CheckpointSource(r.path, r.label)}
    plans = tmp_path / "plans"
    original = catalog.FAMILIES["flux"]
    catalog.FAMILIES["flux"] = family
    try:
        with pytest.raises(FileNotFoundError, match="no TensorRT plan"):
            build_repository(tmp_path / "repo", stack_dirs.onnx, sources, "gpu", ["flux"], plans_dir=plans)
        # A plan built here by TensorRT for RTX is no plan for the serving TensorRT: still refused.
        (plans / vae.triton_model / "1").mkdir(parents=True)
        (plans / vae.triton_model / "1" / "model.sm89.trtrtx1.7.1.116.plan").write_bytes(b"rtx plan")
        with pytest.raises(FileNotFoundError, match="no TensorRT plan named"):
            build_repository(tmp_path / "repo", stack_dirs.onnx, sources, "gpu", ["flux"], plans_dir=plans)
        for name in config.PLAN_FILES.values():
            (plans / vae.triton_model / "1" / name).write_bytes(b"plan bytes")
        build_repository(tmp_path / "repo", stack_dirs.onnx, sources, "gpu", ["flux"], plans_dir=plans)
    finally:
        catalog.FAMILIES["flux"] = original
    model = tmp_path / "repo" / vae.triton_model
    assert 'platform: "tensorrt_plan"' in (model / "config.pbtxt").read_text()
    for name in config.PLAN_FILES.values():
        assert (model / "1" / name).read_bytes() == b"plan bytes"
    assert not (model / "1" / "model.sm89.trtrtx1.7.1.116.plan").exists()
