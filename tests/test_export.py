"""export/: every ONNX component equals its torch module (checked here, not read from the manifest), the text
encoders give what FluxPipeline computes, and the manifest re-exports exactly what changed."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

from components.adapters import ADAPTERS, flux_shape
from export import EXPORTER_VERSION, ExportError, ParityError, content_hash, export_family
from export.__main__ import main as export_main
from export.manifest import file_sha256
from export.onnx_export import check_parity, contiguous_group_norms
from registry import FAMILIES, checkpoints_of

FLUX = FAMILIES["flux"]
NAMES = [c.triton_model for c in FLUX.components]
# Shapes of our own, unlike the exporter's parity shapes: the registry's largest batch, and batch 1 at another
# resolution and text length.
TEST_SHAPES = (
    flux_shape(batch=4, height=320, width=256, t5_tokens=300, clip_tokens=77),
    flux_shape(batch=1, height=256, width=256, t5_tokens=512, clip_tokens=9),
)


def flux_dirs(dirs: dict[str, Path]) -> dict[str, Path]:
    return {c.key: dirs[c.key] for c in checkpoints_of("flux")}


def session(onnx_dir: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_dir / name / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("component", FLUX.components, ids=lambda c: c.triton_model)
def test_onnx_matches_torch_at_two_shapes(component, flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path]):
    graph = onnx.load(str(flux_onnx_dir / component.triton_model / "model.onnx"), load_external_data=False).graph
    for values, specs in ((graph.input, component.inputs), (graph.output, component.outputs)):
        assert [v.name for v in values] == [s.name for s in specs]
        for value, spec in zip(values, specs, strict=True):
            dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            assert len(dims) == len(spec.dims)
            assert all(d == s for d, s in zip(dims, spec.dims, strict=True) if isinstance(s, str) or s > 0), dims

    adapter = ADAPTERS[component.exporter]
    module = adapter.load(tiny_checkpoint_dirs[component.checkpoints[0]] / component.subfolder).eval()
    ort_session = session(flux_onnx_dir, component.triton_model)
    for shape in TEST_SHAPES:
        torch.manual_seed(7)
        inputs = adapter.example(module, shape)
        # GroupNorm inputs made contiguous: torch's channels-last CPU kernel is the inexact side (onnx_export.py).
        with torch.no_grad(), contiguous_group_norms(module):
            expected = module(*inputs).numpy()
        got = ort_session.run(None, {s.name: t.numpy() for s, t in zip(component.inputs, inputs, strict=True)})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, (component.triton_model, shape)


def test_text_encoders_give_what_the_pipeline_computes(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path]):
    pipe = FluxPipeline.from_pretrained(tiny_checkpoint_dirs["flux-dev"], transformer=None, vae=None)
    prompts = ["a red fox on a snowy cliff", "a lighthouse at dawn"]
    with torch.no_grad():
        prompt_embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=512)
    # The tokenization FluxPipeline does: CLIP padded to 77, T5 to max_sequence_length.
    clip_ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    t5_ids = pipe.tokenizer_2(prompts, padding="max_length", max_length=512, truncation=True, return_tensors="np")
    got_pooled = session(flux_onnx_dir, "flux_text_encoder").run(None, {"input_ids": clip_ids.input_ids})[0]
    got_embeds = session(flux_onnx_dir, "flux_text_encoder_2").run(None, {"input_ids": t5_ids.input_ids})[0]
    assert np.abs(got_pooled - pooled.numpy()).max() <= 1e-4
    assert np.abs(got_embeds - prompt_embeds.numpy()).max() <= 1e-4


def test_manifest_records_source_versions_and_parity(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path]):
    manifest = json.loads((flux_onnx_dir / "manifest.json").read_text())
    assert set(manifest["models"]) == set(NAMES)
    for component in FLUX.components:
        entry = manifest["models"][component.triton_model]
        artifact = flux_onnx_dir / component.triton_model / "model.onnx"
        assert entry["exporter"] == component.exporter and entry["role"] == component.role
        assert entry["checkpoints"] == list(component.checkpoints)
        assert entry["label"] == f"local:{tiny_checkpoint_dirs[component.checkpoints[0]]}"
        assert entry["labels"] == {k: f"local:{tiny_checkpoint_dirs[k]}" for k in component.checkpoints}
        for key in component.checkpoints:  # recomputed, not trusted
            assert entry["content_hash"] == content_hash(tiny_checkpoint_dirs[key] / component.subfolder)
        assert entry["sha256"] == file_sha256(artifact)
        assert entry["bytes"] == artifact.stat().st_size > 0
        assert entry["options"] == {"opset": 18, "dynamo": True, "optimize": False, "dtype": "float32"}
        assert entry["versions"]["exporter"] == str(EXPORTER_VERSION)
        assert {"torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers"} <= set(entry["versions"])
        assert entry["inputs"] == json.loads(json.dumps([asdict(s) for s in component.inputs]))
        assert entry["outputs"] == json.loads(json.dumps([asdict(s) for s in component.outputs]))
        assert len(entry["parity"]) == 2
        a, b = (row["shape"] for row in entry["parity"])
        assert a["batch"] != b["batch"] and a != b
        assert all(0 <= e <= 1e-4 for row in entry["parity"] for e in row["max_abs_error"].values())
        assert entry["export_s"] > 0


def test_unchanged_checkpoints_export_nothing(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path]) -> None:
    before = {n: (flux_onnx_dir / n / "model.onnx").stat().st_mtime_ns for n in NAMES}
    manifest = export_family("flux", flux_dirs(tiny_checkpoint_dirs), flux_onnx_dir)
    assert manifest["last_run"] == dict.fromkeys(NAMES, "unchanged")
    assert before == {n: (flux_onnx_dir / n / "model.onnx").stat().st_mtime_ns for n in NAMES}


def _copy(tiny_checkpoint_dirs: dict[str, Path], onnx_dir: Path, tmp_path: Path) -> tuple[dict[str, Path], Path]:
    dirs = {k: Path(shutil.copytree(p, tmp_path / k)) for k, p in flux_dirs(tiny_checkpoint_dirs).items()}
    return dirs, Path(shutil.copytree(onnx_dir, tmp_path / "onnx"))


def _perturb(model_cls: type, folder: Path) -> None:
    """Load, change one weight, save back: what a fine-tuned release of the same module looks like."""
    model = model_cls.from_pretrained(folder)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(folder)


def test_an_updated_transformer_re_exports_only_itself(
    flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path], tmp_path: Path
) -> None:
    dirs, out = _copy(tiny_checkpoint_dirs, flux_onnx_dir, tmp_path)
    # The copy is a new location with the same bytes: nothing is stale.
    assert set(export_family("flux", dirs, out)["last_run"].values()) == {"unchanged"}
    old = json.loads((out / "manifest.json").read_text())["models"]
    _perturb(FluxTransformer2DModel, dirs["flux-dev"] / "transformer")
    mtimes = {n: (out / n / "model.onnx").stat().st_mtime_ns for n in NAMES}
    manifest = export_family("flux", dirs, out)
    assert manifest["last_run"] == {**dict.fromkeys(NAMES, "unchanged"), "flux_dev_transformer": "exported"}
    for name in NAMES:
        changed = name == "flux_dev_transformer"
        assert ((out / name / "model.onnx").stat().st_mtime_ns != mtimes[name]) == changed, name
        assert (manifest["models"][name]["content_hash"] != old[name]["content_hash"]) == changed, name
    assert manifest["models"]["flux_dev_transformer"]["sha256"] != old["flux_dev_transformer"]["sha256"]
    # The second run finds everything fresh again.
    assert set(export_family("flux", dirs, out)["last_run"].values()) == {"unchanged"}


def test_a_damaged_artifact_is_rebuilt(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path], tmp_path: Path):
    dirs, out = _copy(tiny_checkpoint_dirs, flux_onnx_dir, tmp_path)
    (out / "flux_text_encoder" / "model.onnx").write_bytes(b"damaged")
    run = export_family("flux", dirs, out)["last_run"]
    assert run == {**dict.fromkeys(NAMES, "unchanged"), "flux_text_encoder": "exported"}
    assert file_sha256(out / "flux_text_encoder" / "model.onnx") == file_sha256(
        flux_onnx_dir / "flux_text_encoder" / "model.onnx"
    )  # the export itself is reproducible


def test_shared_component_with_different_weights_is_refused(
    tiny_checkpoint_dirs: dict[str, Path], tmp_path: Path
) -> None:
    dirs = {k: Path(shutil.copytree(p, tmp_path / k)) for k, p in flux_dirs(tiny_checkpoint_dirs).items()}
    _perturb(AutoencoderKL, dirs["flux-schnell"] / "vae")
    with pytest.raises(ExportError, match=r"flux_vae_decoder: .* files differ"):
        export_family("flux", dirs, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()  # checked before anything was exported


def test_a_checkpoint_not_given_leaves_its_components_alone(
    flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path], tmp_path: Path
) -> None:
    dirs, out = _copy(tiny_checkpoint_dirs, flux_onnx_dir, tmp_path)
    run = export_family("flux", {"flux-schnell": dirs["flux-schnell"]}, out)["last_run"]
    assert run == {**dict.fromkeys(NAMES, "unchanged"), "flux_dev_transformer": "not_given"}


def test_parity_above_the_limit_fails() -> None:
    component = FLUX.components[0]
    rows = [{"shape": {"batch": 2}, "max_abs_error": {"pooler_output": 1e-6}}]
    assert check_parity(component, rows) == 1e-6
    for bad in (2e-4, float("nan")):
        with pytest.raises(ParityError):
            check_parity(component, [*rows, {"shape": {"batch": 1}, "max_abs_error": {"pooler_output": bad}}])


def test_cli_reports_unchanged(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path], capsys) -> None:
    root = tiny_checkpoint_dirs["flux-dev"].parent
    export_main(["--family", "flux", "--checkpoints-root", str(root), "--out", str(flux_onnx_dir)])
    out = capsys.readouterr().out
    for name in NAMES:
        assert f"[export] {name}: unchanged, skipped" in out
    assert "[export] flux: 5 unchanged" in out
