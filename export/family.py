"""Export every component of a family that is stale, and only those."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from registry import FAMILIES, Component

from . import manifest as mf
from .adapters import ADAPTERS
from .onnx_export import OPSET, check_parity, export_onnx, max_errors

OPTIONS = {"opset": OPSET, "dynamo": True, "optimize": False, "dtype": "float32"}


class ExportError(RuntimeError):
    pass


def _source_hash(component: Component, checkpoint_dirs: Mapping[str, Path]) -> str:
    """The component's content hash; every checkpoint that claims to share it must hold the same bytes."""
    present = [k for k in component.checkpoints if k in checkpoint_dirs]
    if not present:
        raise ExportError(f"{component.triton_model}: none of {component.checkpoints} was given")
    hashes = {k: mf.content_hash(Path(checkpoint_dirs[k]) / component.subfolder) for k in present}
    if len(set(hashes.values())) > 1:
        raise ExportError(
            f"{component.triton_model}: the registry says {present} share {component.subfolder}/, but their "
            f"weights differ ({', '.join(f'{k}={h[:12]}' for k, h in hashes.items())}); "
            "give each its own component in registry/catalog.py"
        )
    return next(iter(hashes.values()))


def export_family(
    family: str,
    checkpoint_dirs: Mapping[str, Path],
    out_dir: Path,
    *,
    force: bool = False,
    labels: Mapping[str, str] | None = None,
) -> dict:
    """Export the stale components of `family` to `out_dir/<triton_model>/model.onnx`; returns the manifest, whose
    `last_run` maps each model to "exported" or "unchanged"."""
    fam = FAMILIES[family]
    manifest = mf.load(out_dir)
    versions = mf.versions()
    last_run: dict[str, str] = {}
    for component in fam.components:
        name = component.triton_model
        source_hash = _source_hash(component, checkpoint_dirs)
        key = mf.artifact_key(
            content=source_hash,
            component=asdict(component),
            options=OPTIONS,
            versions=versions,
            dims=[asdict(d) for d in fam.dims],
        )
        artifact = out_dir / name / "model.onnx"
        if not force and mf.is_fresh(manifest["models"].get(name), key, artifact):
            print(f"[export] {name}: unchanged, skipped", flush=True)
            last_run[name] = "unchanged"
            continue
        first = next(k for k in component.checkpoints if k in checkpoint_dirs)
        print(f"[export] {name}: exporting {component.subfolder}/ of {first}", flush=True)
        adapter = ADAPTERS[component.exporter]
        module = adapter.load(Path(checkpoint_dirs[first]) / component.subfolder).eval()
        # Export into a fresh folder and swap it in, so Triton never sees a half-written model.
        staging = out_dir / f".{name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        seconds = export_onnx(component, fam, module, adapter, staging / "model.onnx")
        parity = max_errors(component, module, adapter, staging / "model.onnx", adapter.shapes)
        check_parity(component, parity)
        shutil.rmtree(out_dir / name, ignore_errors=True)
        staging.rename(out_dir / name)
        size = sum(f.stat().st_size for f in (out_dir / name).iterdir())
        manifest["models"][name] = {
            "key": key,
            "sha256": mf.file_sha256(artifact),
            "family": family,
            "component": component.role,
            "exporter": component.exporter,
            "checkpoints": [k for k in component.checkpoints if k in checkpoint_dirs],
            "source": (labels or {}).get(first, str(checkpoint_dirs[first])),
            "content_hash": source_hash,
            "options": OPTIONS,
            "versions": versions,
            "inputs": [asdict(s) for s in component.inputs],
            "outputs": [asdict(s) for s in component.outputs],
            "parity": parity,
            "export_s": round(seconds, 2),
            "bytes": size,
            "parameters": sum(p.numel() for p in module.parameters()),
        }
        mf.save(out_dir, manifest)
        worst = max(e for row in parity for e in row["max_abs_error"].values())
        print(
            f"[export] {name}: exported in {seconds:.1f}s, {size / 1e6:.1f} MB, max |ORT-torch| {worst:.1e}", flush=True
        )
        last_run[name] = "exported"
        del module
    manifest["last_run"] = last_run
    return manifest
