"""python -m export --family <family> --checkpoints-mode tiny --checkpoints-root .cache/checkpoints --out build/onnx"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from checkpoints import DEFAULT_ROOT, resolve, resolve_lora
from registry import FAMILIES, checkpoints_of, loras_of

from .family import export_family


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a family's components to ONNX (only what changed).")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="repeatable; default: all")
    parser.add_argument("--checkpoints-mode", choices=("tiny", "hub"), default="tiny")
    parser.add_argument("--checkpoints-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=Path("build/onnx"))
    parser.add_argument("--force", action="store_true", help="export even what the manifest says is unchanged")
    args = parser.parse_args(argv)
    for family in args.family or sorted(FAMILIES):
        t0 = time.perf_counter()
        resolved = {c.key: resolve(c.key, args.checkpoints_mode, args.checkpoints_root) for c in checkpoints_of(family)}
        for r in resolved.values():
            print(f"[export] checkpoint {r.key}: {r.label}", flush=True)
        manifest = export_family(
            family,
            {k: r.path for k, r in resolved.items()},
            args.out,
            force=args.force,
            labels={k: r.label for k, r in resolved.items()},
            loras={k: resolve_lora(k, args.checkpoints_mode, args.checkpoints_root).file for k in loras_of(family)},
        )
        counts = {s: sum(v == s for v in manifest["last_run"].values()) for s in set(manifest["last_run"].values())}
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"[export] {family}: {summary} in {time.perf_counter() - t0:.1f}s -> {args.out}", flush=True)


if __name__ == "__main__":
    main()
