"""What export/ built and from what: a JSON manifest keyed by everything an artifact depends on, so a model update
re-exports exactly the components whose inputs changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

EXPORTER_VERSION = 4  # bump when our adapters or export steps change what an export produces
MANIFEST = "manifest.json"
_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "diffusers", "transformers")


def versions() -> dict[str, str]:
    return {"exporter": str(EXPORTER_VERSION), **{p: metadata.version(p) for p in _PACKAGES}}


def content_hash(folder: Path) -> str:
    """sha256 over a checkpoint subfolder's relative file names and contents.

    A Hugging Face snapshot's files are links to blobs named by their own hash: that name stands for the content
    instead of re-reading gigabytes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        real = Path(os.path.realpath(path))
        if path.is_symlink() and real.parent.name == "blobs":
            digest.update(b"blob:" + real.name.encode())
        else:
            digest.update(file_sha256(path).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_key(**depends_on: object) -> str:
    return hashlib.sha256(json.dumps(depends_on, sort_keys=True).encode()).hexdigest()


def load(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("models", {})
    return manifest


def save(out_dir: Path, manifest: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(out_dir / MANIFEST)  # atomic: a crash never leaves half a manifest


def is_fresh(entry: dict | None, key: str, artifact: Path) -> bool:
    """The recorded artifact was built from the same inputs and is still the file that was built."""
    return bool(entry) and entry.get("key") == key and artifact.exists() and file_sha256(artifact) == entry["sha256"]


def lora_hash(lora_file: Path) -> str:
    """sha256 of a LoRA file's bytes: what the manifests record, so a changed LoRA rebuilds what merged it."""
    return file_sha256(Path(lora_file))


def place_file(src: Path, dst: Path) -> bool:
    """Hard-link an artifact to `dst` (no copy of multi-GB files), copying across file systems; True when `dst` now
    holds other bytes than before."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if dst.stat().st_ino == src.stat().st_ino:
            return False
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return True
