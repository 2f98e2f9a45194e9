"""python -m checkpoints --mode tiny --root .cache/checkpoints: resolve every checkpoint of the registry."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from registry import CHECKPOINTS

from .source import resolve
from .tiny import DEFAULT_ROOT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (tiny) or download (hub) the registry's checkpoints.")
    parser.add_argument("--mode", choices=("tiny", "hub"), default="tiny")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("keys", nargs="*", help=f"checkpoint keys (default: all of {sorted(CHECKPOINTS)})")
    args = parser.parse_args(argv)
    for key in args.keys or sorted(CHECKPOINTS):
        t0 = time.perf_counter()
        print(f"[checkpoints] {key}: resolving ({args.mode})", flush=True)
        resolved = resolve(key, args.mode, args.root)
        size = sum(f.stat().st_size for f in resolved.path.rglob("*") if f.is_file())
        print(
            f"[checkpoints] {key}: {resolved.label} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
