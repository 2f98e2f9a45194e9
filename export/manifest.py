"""What export/ built and from what: a JSON manifest keyed by everything an artifact depends on, so a model update
re-exports exactly the components whose inputs changed."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from artifacts import file_sha256, write_atomic

EXPORTER_VERSION = 5  # bump when our adapters or export steps change what an export produces
MANIFEST = "manifest.json"
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


def is_fresh(entry: dict | None, key: str, artifact: Path) -> bool:
    """The recorded artifact was built from the same inputs and is still the file that was built."""
    return bool(entry) and entry.get("key") == key and artifact.exists() and file_sha256(artifact) == entry["sha256"]


def files_fresh(entry: dict, folder: Path) -> bool:
    """Every other recorded file (external weights) is still there at its recorded size: cheap, unlike hashing."""
    return all((folder / n).is_file() and (folder / n).stat().st_size == b for n, b in entry.get("files", {}).items())


def other_files(folder: Path, artifact: str = "model.onnx") -> dict[str, int]:
    """The files beside an artifact (external weights), by name and size, as manifests record them."""
    return {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.name != artifact}
