"""python -m export --family <family> --checkpoints-mode tiny --checkpoints-root .cache/checkpoints --out build/onnx

With --plans DIR it then builds a TensorRT plan of every exported component of those families with the installed
TensorRT (here TensorRT for RTX: name a --capability such as 8.9), so a new family is checked against TensorRT's
parser and builder before it reaches Modal:

    python -m export --family flux --plans build/plans --capability 8.9 --precision fp32 --no-refit
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from checkpoints import DEFAULT_ROOT, resolve, resolve_lora
from registry import FAMILIES, checkpoints_of, loras_of

from .family import EXPORTED, UNCHANGED, export_family


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a family's components to ONNX (only what changed).")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="repeatable; default: all")
    parser.add_argument("--checkpoints-mode", choices=("tiny", "hub"), default="tiny")
    parser.add_argument("--checkpoints-root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--out", type=Path, default=Path("build/onnx"))
    parser.add_argument("--force", action="store_true", help="export even what the manifest says is unchanged")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16: for TensorRT")
    parser.add_argument("--plans", type=Path, help="then build TensorRT plans of the exported components here")
    parser.add_argument("--capability", action="append", help="compute capability to build for (repeatable)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp8"), help="for every plan (default: registry's)")
    parser.add_argument("--no-refit", action="store_true", help="no refittable plans (TensorRT for RTX without GPU)")
    args = parser.parse_args(argv)
    for family in args.family or sorted(FAMILIES):
        t0 = time.perf_counter()
        resolved = {c.key: resolve(c.key, args.checkpoints_mode, args.checkpoints_root) for c in checkpoints_of(family)}
        for r in resolved.values():
            print(f"[export] checkpoint {r.key}: {r.label}", flush=True)
        loras = {k: resolve_lora(k, args.checkpoints_mode, args.checkpoints_root).file for k in loras_of(family)}
        manifest = export_family(
            family,
            {k: r.path for k, r in resolved.items()},
            args.out,
            force=args.force,
            labels={k: r.label for k, r in resolved.items()},
            loras=loras,
            dtype=args.dtype,
        )
        counts = {s: sum(v == s for v in manifest["last_run"].values()) for s in set(manifest["last_run"].values())}
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        print(f"[export] {family}: {summary} in {time.perf_counter() - t0:.1f}s -> {args.out}", flush=True)
        if args.plans is not None:
            from .tensorrt_build import Fp8Inputs, build_family_engines  # TensorRT: only when plans are asked for

            names = [n for n, state in manifest["last_run"].items() if state in (EXPORTED, UNCHANGED)]
            built = build_family_engines(
                family,
                args.out,
                args.plans,
                components=names,
                precisions=dict.fromkeys(names, args.precision) if args.precision else None,
                capabilities=args.capability,
                refit=not args.no_refit,
                fp8=Fp8Inputs(checkpoint_dirs={k: r.path for k, r in resolved.items()}, loras=loras),
            )
            print(f"[tensorrt] {family}: {built['last_run']} -> {args.plans}", flush=True)


if __name__ == "__main__":
    main()
