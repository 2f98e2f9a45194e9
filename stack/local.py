"""Build everything the local stack serves: checkpoints → ONNX components → a Triton model repository."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from checkpoints.source import resolve, resolve_lora
from export import export_family
from model_repository.layout import CheckpointSource, build_repository
from registry import FAMILIES, checkpoints_of, loras_of

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuildDirs:
    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def onnx(self) -> Path:
        return self.root / "onnx"

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def backends(self) -> Path:
        return self.root / "backends"


def build_local_repository(dirs: BuildDirs, mode: str = "tiny", families: tuple[str, ...] | None = None) -> Path:
    """Resolve every checkpoint of `families`, export what changed, lay out the CPU-profile repository."""
    sources: dict[str, CheckpointSource] = {}
    loras: dict[str, Path] = {}
    for family in families or tuple(FAMILIES):
        t0 = time.perf_counter()
        resolved = {c.key: resolve(c.key, mode, dirs.checkpoints) for c in checkpoints_of(family)}
        family_loras = {k: resolve_lora(k, mode, dirs.checkpoints).file for k in loras_of(family)}
        print(f"[stack] {family}: {len(resolved)} checkpoints ready in {time.perf_counter() - t0:.1f}s", flush=True)
        export_family(
            family,
            {k: r.path for k, r in resolved.items()},
            dirs.onnx,
            labels={k: r.label for k, r in resolved.items()},
            loras=family_loras,
        )
        sources.update({k: CheckpointSource(r.path, r.label) for k, r in resolved.items()})
        loras.update(family_loras)
    names = build_repository(dirs.repository, dirs.onnx, sources, profile="cpu", families=families, loras=loras)
    print(f"[stack] model repository {dirs.repository}: {', '.join(names)}", flush=True)
    return dirs.repository
