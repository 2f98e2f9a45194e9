"""Resolve a registry checkpoint to a local diffusers folder: the pinned Hugging Face revision in production, the
tiny random-weight stand-in here, or a folder given by path. All three are then loaded by the same code."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from registry import CHECKPOINTS

from .tiny import build_tiny

MODES = ("tiny", "hub", "local")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    key: str
    path: Path
    label: str  # what served a request: "local:<path>" or "hub:<id>@<revision>"


def resolve(key: str, mode: str, root: Path, path: Path | None = None) -> ResolvedCheckpoint:
    checkpoint = CHECKPOINTS[key]
    if mode == "tiny":
        folder = build_tiny(checkpoint.tiny, Path(root)).resolve()
        return ResolvedCheckpoint(key, folder, f"local:{folder}")
    if mode == "local":
        if path is None or not (Path(path) / "model_index.json").exists():
            raise FileNotFoundError(f"{key}: {path} is not a diffusers checkpoint folder (no model_index.json)")
        folder = Path(path).resolve()
        return ResolvedCheckpoint(key, folder, f"local:{folder}")
    if mode == "hub":
        # A floating revision would let a model change under a served route without a rebuild.
        if not _COMMIT.match(checkpoint.revision) and os.environ.get("RYLA_ALLOW_UNPINNED") != "1":
            raise ValueError(
                f"{key}: revision {checkpoint.revision!r} of {checkpoint.hub_id} is not a pinned 40-hex commit; "
                "pin it in registry/catalog.py (or set RYLA_ALLOW_UNPINNED=1 for a one-off build)"
            )
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                checkpoint.hub_id,
                revision=checkpoint.revision,
                cache_dir=str(Path(root) / "hub"),
                token=os.environ.get("HF_TOKEN"),
            )
        )
        return ResolvedCheckpoint(key, folder, f"hub:{checkpoint.hub_id}@{checkpoint.revision}")
    raise ValueError(f"unknown checkpoint mode {mode!r}; expected one of {MODES}")
