"""What export/ built and from what: a JSON manifest keyed by everything an artifact depends on, so a model update
re-exports exactly the components whose inputs changed."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

EXPORTER_VERSION = 1  # bump when our adapters or export options change what an export produces
_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers")


def versions() -> dict[str, str]:
    return {"exporter": str(EXPORTER_VERSION), **{p: metadata.version(p) for p in _PACKAGES}}


def content_hash(folder: Path) -> str:
    """sha256 over a checkpoint subfolder's file names and contents.

    Files of a Hugging Face snapshot are links to blobs named by their own hash: the name is used instead of
    re-reading gigabytes.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        if path.is_symlink() and "blobs" in Path(os.path.realpath(path)).parts:
            digest.update(Path(os.path.realpath(path)).name.encode())
        else:
            with path.open("rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_key(**depends_on: object) -> str:
    return hashlib.sha256(json.dumps(depends_on, sort_keys=True).encode()).hexdigest()


def load(out_dir: Path) -> dict:
    path = out_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"models": {}}


def save(out_dir: Path, manifest: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(out_dir / "manifest.json")  # atomic: a crash never leaves half a manifest


def is_fresh(entry: dict | None, key: str, artifact: Path) -> bool:
    return bool(entry) and entry["key"] == key and artifact.exists() and file_sha256(artifact) == entry["sha256"]
