"""Drive a pipeline model with Triton's real perf_analyzer (the binary in the tritonclient[all] wheel).

The binary needs libb64.so.0d and libcudart.so.12; the nvidia-pytriton wheel bundles both under hashed names, so we
link them under their sonames in a private folder instead of installing system packages.

    python -m perf.perf_analyzer --route /flux --url 127.0.0.1:8001 --concurrency 1:2 --width 256 --height 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from registry import PIPELINE_INPUTS, ROUTES, family_of, pipeline_model_of
from stack.triton_server import pytriton_dir

_SONAMES = {"libb64-": "libb64.so.0d", "libcudart-": "libcudart.so.12"}


def binary() -> Path:
    found = Path(sys.executable).parent / "perf_analyzer"
    if not found.exists():
        found = Path(shutil.which("perf_analyzer") or "")
    if not found.is_file():
        raise FileNotFoundError("perf_analyzer not found: install tritonclient[all]==2.51.0")
    return found


def library_dir(where: Path) -> Path:
    """A folder of soname links to pytriton's bundled copies of perf_analyzer's libraries."""
    libs = pytriton_dir().parent / "nvidia_pytriton.libs"
    where.mkdir(parents=True, exist_ok=True)
    for prefix, soname in _SONAMES.items():
        target = next(libs.glob(prefix + "*"))
        link = where / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return where


def input_data(route: str, **overrides: object) -> dict:
    """perf_analyzer's --input-data JSON for one request to the route's pipeline model, defaults from the registry."""
    r = ROUTES[route]
    values: dict[str, object] = {
        "CHECKPOINT": r.checkpoint,
        "PROMPT": "a lighthouse on a cliff at dawn",
        "NEGATIVE_PROMPT": "",
        "WIDTH": r.width,
        "HEIGHT": r.height,
        "STEPS": r.steps,
        "CFG": r.cfg,
        "SEED": 0,
        "NUM_IMAGES": 1,
    }
    values.update({k.upper(): v for k, v in overrides.items()})
    task = family_of(r.checkpoint).task

    def tensor(value: object) -> dict:
        if isinstance(value, str):  # text: UTF-8 bytes in a UINT8 tensor (registry.PIPELINE_INPUTS)
            data = list(value.encode())
            return {"content": data, "shape": [len(data)]}
        return {"content": [value], "shape": [1]}

    return {"data": [{s.name: tensor(values[s.name]) for s in PIPELINE_INPUTS[task]}]}


def run(
    route: str,
    url: str,
    work_dir: Path,
    concurrency: str = "1",
    request_count: int = 3,
    timeout_s: float = 300.0,
    **overrides: object,
) -> dict[str, float]:
    """One perf_analyzer measurement over gRPC; returns the CSV row of its report (latencies in µs)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data = work_dir / "input.json"
    data.write_text(json.dumps(input_data(route, **overrides)))
    report = work_dir / "report.csv"
    cmd = [
        str(binary()),
        "-m",
        pipeline_model_of(route),
        "-u",
        url,
        "-i",
        "grpc",
        "--input-data",
        str(data),
        "--concurrency-range",
        concurrency,
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(request_count),
        "--max-trials",
        "3",
        "--stability-percentage",
        "100",
        "-f",
        str(report),
    ]
    env = dict(os.environ, LD_LIBRARY_PATH=str(library_dir(work_dir / "lib")))
    print("[perf_analyzer]", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, timeout=timeout_s)
    lines = report.read_text().splitlines()
    header = lines[0].split(",")
    return {k: float(v) for k, v in zip(header, lines[-1].split(","), strict=False) if _is_number(v)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", default="/flux", choices=sorted(ROUTES))
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--concurrency", default="1:2")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out", default="perf/results/local/perf_analyzer")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("width", args.width), ("height", args.height), ("steps", args.steps)) if v}
    row = run(args.route, args.url, Path(args.out), args.concurrency, args.requests, **overrides)
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
