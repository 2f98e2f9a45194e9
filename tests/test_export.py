"""export/'s manifest, on one family's exports: it records what each export came from and re-exports exactly what
changed. (That every exported graph equals its torch module: tests/contract/test_components.py.)"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel

from artifacts import file_sha256, folder_hash
from export import EXPORTER_VERSION, ExportError, ParityError, export_family
from export.__main__ import main as export_main
from export.onnx_export import check_parity
from registry import FAMILIES, checkpoints_of

FLUX = FAMILIES["flux"]
NAMES = [c.triton_model for c in FLUX.components]


def flux_dirs(dirs: dict[str, Path]) -> dict[str, Path]:
    return {c.key: dirs[c.key] for c in checkpoints_of("flux")}


def test_manifest_records_source_versions_and_parity(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path]):
    manifest = json.loads((flux_onnx_dir / "manifest.json").read_text())
    # The folder the served stack exports every family into: this family's entries, and only its, name it.
    assert {name for name, e in manifest["models"].items() if e["family"] == FLUX.name} == set(NAMES)
    for component in FLUX.components:
        entry = manifest["models"][component.triton_model]
        artifact = flux_onnx_dir / component.triton_model / "model.onnx"
        assert entry["exporter"] == component.exporter and entry["role"] == component.role
        assert entry["checkpoints"] == list(component.checkpoints)
        assert entry["label"] == f"local:{component.checkpoints[0]}"
        assert entry["labels"] == {k: f"local:{k}" for k in component.checkpoints}
        for key in component.checkpoints:  # recomputed, not trusted
            assert entry["content_hash"] == folder_hash(tiny_checkpoint_dirs[key] / component.subfolder)
        assert entry["sha256"] == file_sha256(artifact)
        assert entry["bytes"] == artifact.stat().st_size > 0
        assert entry["options"] == {
            "opset": 18,
            "dynamo": True,
            "optimize": False,
            "dtype": "float32",
            "cleanup": "tensorrt-parser",
        }
        # Constants folded for TensorRT's parser; nothing of the weights (the initializer names are the torch ones).
        assert entry["cleanup"]["folded"] > 0
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


def test_an_updated_component_re_exports_only_itself(
    flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """A new release of the CLIP text encoder (the cheapest component to export), in both checkpoints that share it."""
    dirs, out = _copy(tiny_checkpoint_dirs, flux_onnx_dir, tmp_path)
    # The copy is a new location with the same bytes: nothing is stale.
    assert set(export_family("flux", dirs, out)["last_run"].values()) == {"unchanged"}
    old = json.loads((out / "manifest.json").read_text())["models"]
    for folder in dirs.values():
        _perturb(CLIPTextModel, folder / "text_encoder")
    mtimes = {n: (out / n / "model.onnx").stat().st_mtime_ns for n in NAMES}
    manifest = export_family("flux", dirs, out)
    changed = "flux_text_encoder"
    assert manifest["last_run"] == {**dict.fromkeys(NAMES, "unchanged"), changed: "exported"}
    for name in NAMES:
        assert ((out / name / "model.onnx").stat().st_mtime_ns != mtimes[name]) == (name == changed), name
        assert (manifest["models"][name]["content_hash"] != old[name]["content_hash"]) == (name == changed), name
    assert manifest["models"][changed]["sha256"] != old[changed]["sha256"]
    assert manifest["models"][changed]["version"] == old[changed]["version"] + 1  # a new Triton model version
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
