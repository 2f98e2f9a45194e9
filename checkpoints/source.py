"""Resolve a registry checkpoint to a local diffusers folder: the pinned Hugging Face revision in production, the
tiny random-weight stand-in here, or a folder given by path. All three are then loaded by the same code
(`<Pipeline>.from_pretrained(path)`, `<Model>.from_pretrained(path / subfolder)`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from registry import CHECKPOINTS, LORAS, Checkpoint, Lora

from .tiny import DEFAULT_ROOT, build_tiny

MODES = ("tiny", "hub", "local")
ALLOW_UNPINNED_ENV = "RYLA_ALLOW_UNPINNED"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# The diffusers folders only: some repos also hold single-file checkpoints at the top level (tens of GB) that no
# diffusers loader reads.
_HUB_PATTERNS = ["model_index.json", "*/*"]


@dataclass(frozen=True)
class ResolvedCheckpoint:
    key: str
    path: Path
    # What served a request (api.md x-model): "hub:<id>@<commit>", or a local checkpoint by its registry key,
    # "local:<key>": never a server path.
    label: str


class UnpinnedRevisionError(ValueError):
    pass


def check_pinned(checkpoint: Checkpoint | Lora) -> None:
    """A floating revision ("main") would let a served model change without a rebuild: refuse it unless told."""
    if _COMMIT.match(checkpoint.revision) or os.environ.get(ALLOW_UNPINNED_ENV) == "1":
        return
    raise UnpinnedRevisionError(
        f"{checkpoint.key}: revision {checkpoint.revision!r} of {checkpoint.hub_id} is not a pinned 40-hex commit "
        f"SHA; pin it in its family folder's registry entries, families/<folder>/__init__.py (or set "
        f"{ALLOW_UNPINNED_ENV}=1 for a one-off build)"
    )


@dataclass(frozen=True)
class ResolvedLora:
    key: str
    file: Path  # the .safetensors file
    label: str


def resolve_lora(key: str, mode: str, root: Path = DEFAULT_ROOT) -> ResolvedLora:
    """The local file of registry LoRA `key`: its tiny random stand-in (same key layout) or the pinned hub file."""
    if key not in LORAS:
        raise KeyError(f"unknown LoRA {key!r}; known: {sorted(LORAS)}")
    lora = LORAS[key]
    if mode == "tiny":
        file = (build_tiny(lora.tiny, Path(root)) / lora.weight_name).resolve()
        return ResolvedLora(key, file, f"local:{key}")
    if mode == "hub":
        check_pinned(lora)
        from huggingface_hub import hf_hub_download

        file = Path(
            hf_hub_download(lora.hub_id, lora.weight_name, revision=lora.revision, cache_dir=str(Path(root) / "hub"))
        )
        return ResolvedLora(key, file, f"hub:{lora.hub_id}/{lora.weight_name}@{file.parent.name}")
    raise ValueError(f"LoRA mode {mode!r}: expected tiny or hub")


def resolve(key: str, mode: str, root: Path = DEFAULT_ROOT, path: Path | None = None) -> ResolvedCheckpoint:
    """The local folder of checkpoint `key`.

    mode "tiny": build (or reuse) the tiny stand-in under `root`; "hub": download the pinned revision's diffusers
    folders into `root/hub` (HF_TOKEN for gated repos); "local": the diffusers folder at `path`.
    """
    if key not in CHECKPOINTS:
        raise KeyError(f"unknown checkpoint {key!r}; known: {sorted(CHECKPOINTS)}")
    checkpoint = CHECKPOINTS[key]
    if mode == "tiny":
        folder = build_tiny(checkpoint.tiny, Path(root)).resolve()
        return ResolvedCheckpoint(key, folder, f"local:{key}")
    if mode == "local":
        if path is None or not (Path(path) / "model_index.json").is_file():
            raise FileNotFoundError(f"{key}: {path} is not a diffusers checkpoint folder (no model_index.json)")
        folder = Path(path).resolve()
        return ResolvedCheckpoint(key, folder, f"local:{key}")
    if mode == "hub":
        check_pinned(checkpoint)
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                checkpoint.hub_id,
                revision=checkpoint.revision,
                cache_dir=str(Path(root) / "hub"),
                allow_patterns=_HUB_PATTERNS,
            )
        )
        # The snapshot folder is named by the commit it holds: the label names what was served even when unpinned.
        return ResolvedCheckpoint(key, folder, f"hub:{checkpoint.hub_id}@{folder.name}")
    raise ValueError(f"unknown checkpoint mode {mode!r}; expected one of {MODES}")


def with_merged(checkpoint: ResolvedCheckpoint, loras: Sequence[ResolvedLora]) -> ResolvedCheckpoint:
    """A checkpoint served with LoRAs merged into its weights is labelled by them too: "<checkpoint>+<lora>"."""
    return replace(checkpoint, label="+".join([checkpoint.label, *(lora.label for lora in loras)]))
