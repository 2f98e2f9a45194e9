"""Export every component of a family that is stale, and only those."""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from artifacts import file_sha256, folder_hash, staged_folder
from components.adapters import INITIALIZER_PREFIX, adapter_of, parity_shapes
from components.lora_merge import merge_lora
from registry import FAMILIES, LORAS, Component, Family

from . import manifest as mf
from .onnx_export import PARITY_LIMIT, ExportError, check_parity, export_onnx, in_dtype, max_errors, options

# last_run values
EXPORTED, UNCHANGED, NOT_GIVEN, TORCH_ONLY = "exported", "unchanged", "not_given", "torch_only"
STALE = "stale"  # last_run of a dry run: would be exported
_GRAPH_RUNTIMES = {"onnxruntime", "tensorrt"}  # the runtimes that need an exported graph


def _log(message: str) -> None:
    print(f"[export] {message}", flush=True)


def source_hash(component: Component, checkpoint_dirs: Mapping[str, Path]) -> str:
    """The content hash of the component's subfolder; every given checkpoint that the registry says shares it must
    hold the same bytes."""
    present = [k for k in component.checkpoints if k in checkpoint_dirs]
    if not present:
        raise ExportError(f"{component.triton_model}: none of {list(component.checkpoints)} was given")
    hashes = {k: folder_hash(Path(checkpoint_dirs[k]) / component.subfolder) for k in present}
    if len(set(hashes.values())) > 1:
        raise ExportError(
            f"{component.triton_model}: the registry says {present} share {component.subfolder}/, but their "
            f"files differ ({', '.join(f'{k}={h[:12]}' for k, h in hashes.items())}); "
            "give each its own component in the family folder's registry entries"
        )
    return next(iter(hashes.values()))


# Registry fields that shape other artifacts, not the FP32 graph: the FP8 layer choice keys the Q/DQ graph
# (export/fp8_qdq.py) instead, so changing it does not re-export the ONNX and bump the served model version.
_NOT_IN_EXPORT_KEY = ("fp8_layers",)


def _export_fields(component: Component) -> dict:
    return {k: v for k, v in asdict(component).items() if k not in _NOT_IN_EXPORT_KEY}


def _dims_used(component: Component, family: Family) -> dict[str, dict[str, int]]:
    names = {d for spec in (*component.inputs, *component.outputs) for d in spec.dims if isinstance(d, str)}
    return {d.name: {"min": d.min, "opt": d.opt, "max": d.max} for d in family.dims if d.name in names}


def _label(key: str, labels: Mapping[str, str] | None) -> str:
    return (labels or {}).get(key, f"local:{key}")


# Why a BF16 export has no parity check here: ONNX Runtime's CPU provider has no BF16 kernels for its matmuls and
# convolutions; its graph is the FP32 export's (same module, same exporter) in another dtype, built by TensorRT.
BF16_PARITY = "not run: ONNX Runtime's CPU provider has no BF16 kernels (the FP32 export's parity holds for the graph)"


def _export_one(
    component: Component,
    family: Family,
    source: Path,
    staging: Path,
    lora_file: Path | None = None,
    dtype: str = "float32",
) -> tuple[dict, int]:
    """Export into `staging`, check the graph and (FP32) parity; returns (manifest fields, parameter count)."""
    adapter = adapter_of(family.name, component.exporter)
    module = adapter.load(source).eval()
    if lora_file is not None:  # merged at build time: the graph carries the fused weights under the base names
        merge_lora(module.model, lora_file, family.pipeline_class, LORAS[component.merged_lora].scale)
    shapes = parity_shapes(family.name)
    example = adapter.example(module, shapes[0])
    if dtype != "float32":
        module, example = in_dtype(component, module, example, dtype)
    t0 = time.perf_counter()
    cleanup = export_onnx(component, family, module, example, staging / "model.onnx")
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if dtype == "float32":
        parity = max_errors(component, module, adapter, staging / "model.onnx", shapes)
        check_parity(component, parity)
    else:
        parity = BF16_PARITY
    parity_s = time.perf_counter() - t0
    parameters = sum(p.numel() for p in module.parameters())
    del module
    gc.collect()  # the next component should not share memory with this one's weights (real sizes: tens of GB)
    fields = {"parity": parity, "cleanup": cleanup, "export_s": round(export_s, 2), "parity_s": round(parity_s, 2)}
    return fields, parameters


def with_merged_lora(component: Component, content: str, loras: Mapping[str, Path] | None) -> tuple[Path | None, str]:
    """The LoRA file `component` merges at build time (None without one) and its checkpoint `content` hash extended
    by that file's hash, so a changed LoRA rebuilds what merged it."""
    if not component.merged_lora:
        return None, content
    if component.merged_lora not in (loras or {}):
        raise ExportError(f"{component.triton_model}: merges LoRA {component.merged_lora!r}, which was not given")
    lora_file = Path(loras[component.merged_lora])
    return lora_file, f"{content}+lora:{file_sha256(lora_file)}"


def export_family(
    family: str,
    checkpoint_dirs: Mapping[str, Path],
    out_dir: Path,
    *,
    force: bool = False,
    labels: Mapping[str, str] | None = None,
    loras: Mapping[str, Path] | None = None,
    profile: str | None = None,
    dtype: str = "float32",
    components: Sequence[str] | None = None,
    dry_run: bool = False,
) -> dict:
    """Export the stale components of `family` to `out_dir/<triton_model>/model.onnx` and record them in
    `out_dir/manifest.json`; with dtype "bfloat16", the BF16 graphs that TensorRT builds bf16 and fp8 plans from, to
    `out_dir/bf16/` (manifest.graph_dir).

    `checkpoint_dirs` maps checkpoint keys to diffusers folders; `labels` says where each came from ("hub:id@rev",
    "local:path"; default the path); `loras`: registry LoRA key -> file, for components that merge one; `profile`:
    export only what that serving profile runs from a graph (None: what any profile does). A component none of
    whose checkpoints is given is left alone, as is one that runs in torch (on `profile`, or on every profile).
    components: of those, only these (None: all). dry_run: export nothing, only say what is stale.
    Returns the manifest plus `last_run`: triton model -> "exported" (dry run: "stale") | "unchanged" | "not_given"
    | "torch_only".
    """
    fam = FAMILIES[family]
    out_dir = mf.graph_dir(Path(out_dir), dtype)
    export_options = options(dtype)
    manifest = mf.load(out_dir)
    versions = mf.versions()
    last_run: dict[str, str] = {}
    # Every shared subfolder is checked before anything is exported: a mismatch fails fast and changes nothing.
    contents = {
        c.triton_model: source_hash(c, checkpoint_dirs)
        for c in fam.components
        if any(k in checkpoint_dirs for k in c.checkpoints)
    }
    for component in fam.components:
        name = component.triton_model
        if components is not None and name not in components:
            continue
        present = [k for k in component.checkpoints if k in checkpoint_dirs]
        if not present:
            _log(f"{name}: none of {list(component.checkpoints)} given, skipped")
            last_run[name] = NOT_GIVEN
            continue
        runtimes = {r for p, r in component.backends if profile is None or p == profile}
        if not runtimes & _GRAPH_RUNTIMES:
            _log(f"{name}: runs in torch on {'every' if profile is None else f'the {profile}'} profile, not exported")
            last_run[name] = TORCH_ONLY
            continue
        lora_file, content = with_merged_lora(component, contents[name], loras)
        key = mf.artifact_key(
            content=content,
            component=_export_fields(component),
            dims=_dims_used(component, fam),
            options=export_options,
            versions=versions,
            parity_shapes=parity_shapes(fam.name),
        )
        entry = manifest["models"].get(name)
        folder = out_dir / name
        if not force and mf.is_fresh(entry, key, folder / "model.onnx") and mf.files_fresh(entry, folder):
            _log(f"{name}: unchanged, skipped")
            last_run[name] = UNCHANGED
            continue
        if dry_run:
            last_run[name] = STALE
            continue
        first = present[0]
        _log(f"{name}: exporting {component.subfolder}/ of {first} ({component.exporter})")
        # Export into a fresh folder and swap it in, so a reader never sees a half-written or unchecked model.
        with staged_folder(folder) as staging:
            fields, parameters = _export_one(
                component, fam, Path(checkpoint_dirs[first]) / component.subfolder, staging, lora_file, dtype
            )
        files = mf.other_files(folder)
        size = (folder / "model.onnx").stat().st_size + sum(files.values())
        exported = {
            "key": key,
            # Each export of a component is a new Triton model version (model_repository/layout.py).
            "version": int(entry.get("version", 1)) + 1 if entry else 1,
            "family": family,
            "role": component.role,
            "exporter": component.exporter,
            "checkpoints": present,
            "exported_from": first,
            "label": _label(first, labels),
            "labels": {k: _label(k, labels) for k in present},
            "subfolder": component.subfolder,
            "content_hash": content,
            "options": export_options,
            "versions": versions,
            "inputs": [asdict(s) for s in component.inputs],
            "outputs": [asdict(s) for s in component.outputs],
            "dims": _dims_used(component, fam),
            "parity_limit": PARITY_LIMIT,
            **fields,
            "bytes": size,
            "files": files,
            "sha256": file_sha256(folder / "model.onnx"),
            "parameters": parameters,
            "initializer_prefix": INITIALIZER_PREFIX,
            **(
                {"merged_lora": {"key": component.merged_lora, "sha256": file_sha256(lora_file)}}
                if lora_file is not None
                else {}
            ),
        }
        manifest = mf.record(out_dir, name, exported)
        if isinstance(fields["parity"], list):
            worst = max(e for row in fields["parity"] for e in row["max_abs_error"].values())
            checked = f"(+{fields['parity_s']:.1f}s parity), max |ORT-torch| {worst:.1e} at 2 shapes"
        else:
            checked = f"in {dtype} (parity {fields['parity']})"
        _log(f"{name}: exported in {fields['export_s']:.1f}s {checked}, {size / 1e6:.2f} MB")
        last_run[name] = EXPORTED
    return {**manifest, "last_run": last_run}
