"""What export/ built and from what: a JSON manifest keyed by everything an artifact depends on, so a model update
re-exports exactly the components whose inputs changed."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from artifacts import file_sha256, write_atomic

EXPORTER_VERSION = 6  # bump when our adapters or export steps change what an export produces
MANIFEST = "manifest.json"
# Where each dtype's exports go under the export folder: the FP32 graphs (the CPU profile serves them, and they are
# what parity is checked on) at the top, the BF16 graphs that TensorRT builds bf16 and fp8 plans from in bf16/.
GRAPH_FOLDERS = {"float32": "", "bfloat16": "bf16"}
_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers")


def versions() -> dict[str, str]:
    return {"exporter": str(EXPORTER_VERSION), **{p: metadata.version(p) for p in _PACKAGES}}


def artifact_key(**depends_on: object) -> str:
    return hashlib.sha256(json.dumps(depends_on, sort_keys=True).encode()).hexdigest()


def load(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("models", {})
    return manifest


def save(out_dir: Path, manifest: dict) -> None:
    # Atomic: a crash never leaves half a manifest.
    write_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """One writer of the folder's manifest at a time, across processes (parallel exports of several families)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / f"{MANIFEST}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(out_dir: Path, name: str, entry: dict) -> dict:
    """Set one model's entry in the folder's manifest, keeping what other writers recorded meanwhile; returns the
    manifest as saved."""
    with _locked(out_dir):
        manifest = load(out_dir)
        manifest["models"][name] = entry
        save(out_dir, manifest)
    return manifest


def is_fresh(entry: dict | None, key: str, artifact: Path) -> bool:
    """The recorded artifact was built from the same inputs and is still the file that was built."""
    return bool(entry) and entry.get("key") == key and artifact.exists() and file_sha256(artifact) == entry["sha256"]


def files_fresh(entry: dict, folder: Path) -> bool:
    """Every other recorded file (external weights) is still there at its recorded size: cheap, unlike hashing."""
    return all((folder / n).is_file() and (folder / n).stat().st_size == b for n, b in entry.get("files", {}).items())


def other_files(folder: Path, artifact: str = "model.onnx") -> dict[str, int]:
    """The files beside an artifact (external weights), by name and size, as manifests record them."""
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.name != artifact}


def graph_dir(onnx_dir: Path, dtype: str) -> Path:
    """The folder (with its own manifest) that holds the `dtype` exports of the export folder `onnx_dir`."""
    if dtype not in GRAPH_FOLDERS:
        raise ValueError(f"export dtype {dtype!r}: expected one of {list(GRAPH_FOLDERS)}")
    return Path(onnx_dir) / GRAPH_FOLDERS[dtype] if GRAPH_FOLDERS[dtype] else Path(onnx_dir)
