"""python -m checkpoints --mode tiny --root .cache/checkpoints: resolve every checkpoint of the registry."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from registry import CHECKPOINTS

from .source import MODES, resolve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=MODES[:2], default="tiny")
    parser.add_argument("--root", type=Path, default=Path(".cache/checkpoints"))
    parser.add_argument("keys", nargs="*", default=sorted(CHECKPOINTS))
    args = parser.parse_args(argv)
    for key in args.keys:
        t0 = time.perf_counter()
        print(f"[checkpoints] {key}: resolving ({args.mode})", flush=True)
        resolved = resolve(key, args.mode, args.root)
        print(f"[checkpoints] {key}: {resolved.label} in {time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
