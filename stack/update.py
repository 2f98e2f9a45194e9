"""A model update on a running stack: rebuild exactly the stale artifacts, then have Triton load them while the old
versions keep serving (explicit model control), with no restart and no failed request.

    python -m stack.update --family flux          # after a checkpoint or LoRA changed on disk (local stack)

export/ decides what is stale from its manifest (content hash of each component's checkpoint subfolder, merged-LoRA
hash, exporter and library versions, dims); each re-exported component becomes a new model version next to the one
serving; pipeline models reload when their config changed (a new checkpoint label).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from checkpoints.source import resolve, resolve_lora
from export import export_family
from model_repository.layout import CheckpointSource, build_repository
from registry import checkpoints_of, loras_of

from .local import BuildDirs
from .repository_watch import load_order
from .triton_server import TritonServer


@dataclass(frozen=True)
class Update:
    exported: list[str]  # components export/ rebuilt
    reloaded: list[str]  # models Triton loaded anew, in load order
    seconds: float


@dataclass(frozen=True)
class Rebuild:
    exported: list[str]  # components export/ rebuilt
    changed: set[str]  # Triton models whose folder in the repository changed (a new version or config)


def _log(message: str) -> None:
    print(f"[update] {message}", flush=True)


def rebuild_family(
    family: str,
    dirs: BuildDirs,
    *,
    mode: str = "tiny",
    checkpoint_paths: dict[str, Path] | None = None,
    profile: str = "cpu",
) -> Rebuild:
    """Re-export what changed in `family` and lay out the new versions in the repository; loads nothing.

    `checkpoint_paths` names local folders per checkpoint key (mode "local"), e.g. an updated checkpoint."""
    paths = checkpoint_paths or {}
    resolved = {
        c.key: resolve(c.key, "local" if c.key in paths else mode, dirs.checkpoints, paths.get(c.key))
        for c in checkpoints_of(family)
        if c.key in paths or not paths
    }
    loras = {k: resolve_lora(k, mode, dirs.checkpoints).file for k in loras_of(family)}
    manifest = export_family(
        family,
        {k: r.path for k, r in resolved.items()},
        dirs.onnx,
        labels={k: r.label for k, r in resolved.items()},
        loras=loras,
    )
    exported = sorted(name for name, state in manifest["last_run"].items() if state == "exported")
    changed: set[str] = set()
    sources = {k: CheckpointSource(r.path, r.label) for k, r in resolved.items()}
    build_repository(dirs.repository, dirs.onnx, sources, profile, families=[family], loras=loras, changed=changed)
    return Rebuild(exported, changed)


def load_models(triton: TritonServer, models: Iterable[str]) -> list[str]:
    """Have Triton load each of `models` anew, in load order; the old versions serve until each switch."""
    order = load_order(models)
    for name in order:
        t1 = time.perf_counter()
        triton.load_model(name)
        _log(f"{name}: new version loaded and serving in {time.perf_counter() - t1:.1f}s")
    return order


def update_family(
    family: str,
    dirs: BuildDirs,
    triton: TritonServer,
    *,
    mode: str = "tiny",
    checkpoint_paths: dict[str, Path] | None = None,
    profile: str = "cpu",
) -> Update:
    """Re-export what changed in `family`, lay out the new versions and reload them in `triton`."""
    t0 = time.perf_counter()
    rebuild = rebuild_family(family, dirs, mode=mode, checkpoint_paths=checkpoint_paths, profile=profile)
    order = load_models(triton, rebuild.changed)
    if not order:
        _log(f"{family}: nothing changed")
    return Update(rebuild.exported, order, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    from .local import REPO_ROOT
    from .triton_server import Ports

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True)
    parser.add_argument("--build", type=Path, default=REPO_ROOT / "build" / "local", help="make serve's build dir")
    parser.add_argument("--http-port", type=int, default=8000)
    args = parser.parse_args(argv)
    dirs = BuildDirs(args.build)
    # The running server is addressed by its HTTP port; this process neither starts nor stops it.
    server = TritonServer(dirs.repository, dirs.backends, Ports(args.http_port, args.http_port + 1, args.http_port + 2))
    result = update_family(args.family, dirs, server)
    _log(f"exported {result.exported or 'nothing'}, reloaded {result.reloaded or 'nothing'} in {result.seconds:.1f}s")


if __name__ == "__main__":
    main()
