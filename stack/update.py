"""A model update on a running stack: rebuild exactly the stale artifacts, then have Triton load them while the old
versions keep serving (explicit model control), with no restart and no failed request.

    python -m stack.update --family <family>      # after a checkpoint or LoRA changed on disk (local stack)

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

from registry import checkpoints_of

from .build import REPO_ROOT, Build, BuildDirs, build
from .repository_watch import load_order
from .triton_server import Ports, TritonServer


@dataclass(frozen=True)
class Update:
    exported: list[str]  # components export/ rebuilt
    reloaded: list[str]  # models Triton loaded anew, in load order
    seconds: float


def _log(message: str) -> None:
    print(f"[update] {message}", flush=True)


def rebuild_family(
    family: str,
    dirs: BuildDirs,
    *,
    mode: str = "tiny",
    checkpoint_paths: dict[str, Path] | None = None,
    profile: str = "cpu",
) -> Build:
    """Re-export what changed in `family` and lay out the new versions in the repository; loads nothing.

    `checkpoint_paths` names local folders per checkpoint key (mode "local"), e.g. an updated checkpoint; given,
    only those checkpoints are rebuilt."""
    paths = checkpoint_paths or {}
    keys = [c.key for c in checkpoints_of(family) if c.key in paths or not paths]
    return build(dirs, checkpoints=keys, mode=mode, paths=paths, profile=profile)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", required=True)
    parser.add_argument("--build", type=Path, default=REPO_ROOT / "build" / "local", help="make serve's build dir")
    parser.add_argument("--http-port", type=int, default=8000)
    args = parser.parse_args(argv)
    dirs = BuildDirs.under(args.build)
    # The running server is addressed by its HTTP port; this process neither starts nor stops it.
    server = TritonServer(dirs.repository, dirs.backends, Ports(args.http_port, args.http_port + 1, args.http_port + 2))
    result = update_family(args.family, dirs, server)
    _log(f"exported {result.exported or 'nothing'}, reloaded {result.reloaded or 'nothing'} in {result.seconds:.1f}s")


if __name__ == "__main__":
    main()
