"""export/: every ONNX component equals its torch module at two shapes, and the manifest re-exports exactly what
changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import resolve
from export import ExportError, export_family
from export.adapters import ADAPTERS
from registry import FAMILIES
from stack.local import BuildDirs

FLUX = FAMILIES["flux"]


@pytest.fixture(scope="module")
def flux_dirs(stack_dirs: BuildDirs) -> dict[str, Path]:
    return {k: resolve(k, "tiny", stack_dirs.checkpoints).path for k in ("flux-schnell", "flux-dev")}


@pytest.fixture(scope="module")
def onnx_dir(model_repository: Path, stack_dirs: BuildDirs) -> Path:
    return stack_dirs.onnx  # exported by the session's model repository build


@pytest.mark.parametrize("component", FLUX.components, ids=lambda c: c.triton_model)
def test_onnx_matches_torch_at_two_shapes(component, onnx_dir: Path, flux_dirs: dict[str, Path]) -> None:
    adapter = ADAPTERS[component.exporter]
    module = adapter.load(flux_dirs[component.checkpoints[0]] / component.subfolder).eval()
    path = onnx_dir / component.triton_model / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == [s.name for s in component.inputs]
    assert [o.name for o in graph.output] == [s.name for s in component.outputs]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = [dict(s) for s in adapter.shapes]
    assert shapes[0] != shapes[1]
    for shape in shapes:
        torch.manual_seed(7)
        inputs = adapter.example(module, shape)
        with torch.no_grad():
            expected = module(*inputs).numpy()
        got = session.run(None, {s.name: t.numpy() for s, t in zip(component.inputs, inputs, strict=True)})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4, (component.triton_model, shape)


def test_manifest_records_source_versions_and_parity(onnx_dir: Path) -> None:
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    assert set(manifest["models"]) == {c.triton_model for c in FLUX.components}
    for name, entry in manifest["models"].items():
        assert entry["source"].startswith("local:")
        assert len(entry["content_hash"]) == 64 and len(entry["sha256"]) == 64
        assert {"torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "exporter"} <= set(entry["versions"])
        assert len(entry["parity"]) == 2
        assert all(e <= 1e-4 for row in entry["parity"] for e in row["max_abs_error"].values()), name
        assert entry["bytes"] > 0 and entry["export_s"] > 0
    shared = manifest["models"]["flux_text_encoder_2"]["checkpoints"]
    assert sorted(shared) == ["flux-dev", "flux-schnell"]


def test_unchanged_checkpoints_export_nothing(onnx_dir: Path, flux_dirs: dict[str, Path]) -> None:
    manifest = export_family("flux", flux_dirs, onnx_dir)
    assert set(manifest["last_run"].values()) == {"unchanged"}


def _copy_flux(flux_dirs: dict[str, Path], onnx_dir: Path, tmp_path: Path) -> tuple[dict[str, Path], Path]:
    dirs = {k: Path(shutil.copytree(p, tmp_path / k)) for k, p in flux_dirs.items()}
    out = Path(shutil.copytree(onnx_dir, tmp_path / "onnx"))
    return dirs, out


def _perturb(weights_dir: Path) -> None:
    path = next(weights_dir.glob("*.safetensors"))
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, path, metadata={"format": "pt"})


def test_an_updated_transformer_re_exports_only_itself(
    onnx_dir: Path, flux_dirs: dict[str, Path], tmp_path: Path
) -> None:
    dirs, out = _copy_flux(flux_dirs, onnx_dir, tmp_path)
    # The copy is a new location with the same bytes: nothing is stale.
    assert set(export_family("flux", dirs, out)["last_run"].values()) == {"unchanged"}
    _perturb(dirs["flux-dev"] / "transformer")
    before = (out / "flux_schnell_transformer" / "model.onnx").stat().st_mtime_ns
    run = export_family("flux", dirs, out)["last_run"]
    assert run == {
        "flux_text_encoder": "unchanged",
        "flux_text_encoder_2": "unchanged",
        "flux_schnell_transformer": "unchanged",
        "flux_dev_transformer": "exported",
        "flux_vae_decoder": "unchanged",
    }
    assert (out / "flux_schnell_transformer" / "model.onnx").stat().st_mtime_ns == before


def test_a_deleted_artifact_is_rebuilt(onnx_dir: Path, flux_dirs: dict[str, Path], tmp_path: Path) -> None:
    dirs, out = _copy_flux(flux_dirs, onnx_dir, tmp_path)
    (out / "flux_text_encoder" / "model.onnx").write_bytes(b"corrupt")
    assert export_family("flux", dirs, out)["last_run"]["flux_text_encoder"] == "exported"


def test_shared_component_with_different_weights_is_refused(
    onnx_dir: Path, flux_dirs: dict[str, Path], tmp_path: Path
) -> None:
    dirs, out = _copy_flux(flux_dirs, onnx_dir, tmp_path)
    _perturb(dirs["flux-schnell"] / "vae")
    with pytest.raises(ExportError, match="weights differ"):
        export_family("flux", dirs, out)
