"""Drive a pipeline model with Triton's real perf_analyzer (the binary in the tritonclient[all] wheel).

The binary needs libb64.so.0d and libcudart.so.12; the nvidia-pytriton wheel bundles both under hashed names, so we
link them under their sonames in a private folder instead of installing system packages.

    python -m perf.perf_analyzer --route <path> --url 127.0.0.1:8001 --concurrency 1:2 --width 256 --height 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from registry import ROUTES, Component, SampleMedia, component_of, pipeline_model_of, task_of
from registry.tasks import resolve
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


def request_values(route: str, size: int | None = None, **overrides: object) -> dict[str, object]:
    """One request to the route's pipeline model, by input name: the route's sample request with its defaults
    (registry/tasks.py: media rendered as arrays of the route's default size, or size x size), seed 0, and
    `overrides` by field name (prompt, width, steps, ...)."""
    from api.samples import sample_pixels  # the rendering every sample request shares; no tritonclient behind it

    r = ROUTES[route]
    spec = task_of(r)
    values = {f.name: resolve(f.default, r) for f in spec.fields_of(r)}
    values |= spec.sample_values(r, size=size, seed=0) | overrides
    kinds = {f.name: f.kind for f in spec.fields}
    values = {k: sample_pixels(v, kinds[k]) if isinstance(v, SampleMedia) else v for k, v in values.items()}
    return spec.tensor_values(r, values)


def input_data(route: str, size: int | None = None, **overrides: object) -> dict:
    """perf_analyzer's --input-data JSON for one request to the route's pipeline model."""
    values = request_values(route, size, **overrides)

    def tensor(value: object) -> dict:
        if isinstance(value, str):  # text: UTF-8 bytes in a UINT8 tensor (registry/tasks.py)
            data = list(value.encode())
            return {"content": data, "shape": [len(data)]}
        if isinstance(value, np.ndarray):  # decoded media, as the API sends it
            return {"content": value.reshape(-1).tolist(), "shape": list(value.shape)}
        return {"content": [value], "shape": [1]}

    return {"data": [{name: tensor(value) for name, value in values.items() if value is not None}]}


def component_shapes(component: Component, onnx_path: Path, sizes: dict[str, int]) -> dict[str, list[int]]:
    """Concrete input shapes for a component: registry dims from `sizes`, the checkpoint's fixed widths (-1 in the
    registry) from the exported graph."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    fixed = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    return {
        spec.name: [
            sizes[d] if isinstance(d, str) else (d if d != -1 else fixed[spec.name][axis])
            for axis, d in enumerate(spec.dims)
        ]
        for spec in component.inputs
    }


def _measure(
    model: str,
    url: str,
    work_dir: Path,
    data_args: list[str],
    concurrency: str,
    request_count: int,
    timeout_s: float,
    streaming: bool = False,
) -> dict[str, float]:
    report = work_dir / "report.csv"
    cmd = [
        str(binary()),
        "-m",
        model,
        "-u",
        url,
        "-i",
        "grpc",
        *data_args,
        # Pipeline models are decoupled (progress, then the answer): only a gRPC stream reaches them.
        *(["--streaming"] if streaming else []),
        "--concurrency-range",
        concurrency,
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(request_count),
        # perf_analyzer reports once 3 windows in a row agree (within 100 %); on 2 busy cores a slow window breaks
        # a run of 3, so it may take up to 10 windows to find one (it failed with 3 in CI once).
        "--max-trials",
        "10",
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


def run(
    route: str,
    url: str,
    work_dir: Path,
    concurrency: str = "1",
    request_count: int = 3,
    timeout_s: float = 300.0,
    **overrides: object,
) -> dict[str, float]:
    """One perf_analyzer measurement of a route's pipeline model over gRPC; the last CSV row (latencies in µs)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data = work_dir / "input.json"
    data.write_text(json.dumps(input_data(route, **overrides)))
    model = pipeline_model_of(route)
    data_args = ["--input-data", str(data)]
    return _measure(model, url, work_dir, data_args, concurrency, request_count, timeout_s, streaming=True)


def run_component(
    component: Component,
    onnx_path: Path,
    sizes: dict[str, int],
    url: str,
    work_dir: Path,
    concurrency: str = "1",
    request_count: int = 3,
    timeout_s: float = 300.0,
) -> dict[str, float]:
    """perf_analyzer on one component model with random inputs of the given dim sizes (e.g. one transformer step).
    The inputs go as a JSON file, not perf_analyzer's `random`, which would fill optional inputs too (a `lora`
    component's LORAS: left out, the base weights run)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    shapes = component_shapes(component, onnx_path, sizes)
    rng = np.random.default_rng(0)
    dtypes = {spec.name: spec.dtype for spec in component.inputs}

    def tensor(name: str, shape: list[int]) -> dict:
        count = int(np.prod(shape))
        content = rng.standard_normal(count).tolist() if dtypes[name] == "FP32" else [1] * count  # masks: all kept
        return {"content": content, "shape": shape}

    data = work_dir / "component_input.json"
    data.write_text(json.dumps({"data": [{name: tensor(name, shape) for name, shape in shapes.items()}]}))
    return _measure(
        component.triton_model, url, work_dir, ["--input-data", str(data)], concurrency, request_count, timeout_s
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", default=next(iter(ROUTES)), choices=sorted(ROUTES))
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--concurrency", default="1:2")
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out", default="perf/results/local/perf_analyzer")
    parser.add_argument("--component", help="a component model (a transformer's name) instead of the route")
    parser.add_argument("--repository", default="build/local/model_repository", help="where its model.onnx lies")
    args = parser.parse_args(argv)
    if args.component:
        family, component = component_of(args.component)
        width, height = args.width or 1024, args.height or 1024
        # One denoising step at the route's size; text dims at their engine optimum.
        sizes = {d.name: d.opt for d in family.dims} | {
            "batch": 1,
            "image_tokens": (width // 16) * (height // 16),
            "latent_height": height // 8,
            "latent_width": width // 8,
        }
        onnx_path = Path(args.repository) / args.component / "1" / "model.onnx"
        row = run_component(component, onnx_path, sizes, args.url, Path(args.out), args.concurrency, args.requests)
    else:
        overrides = {k: v for k, v in (("width", args.width), ("height", args.height), ("steps", args.steps)) if v}
        row = run(args.route, args.url, Path(args.out), args.concurrency, args.requests, **overrides)
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
