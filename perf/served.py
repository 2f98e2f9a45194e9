"""The served path of the GPU benchmark: the GPU profile of our model repository in a real tritonserver (the one in
the nvidia-pytriton wheel), driven over HTTP, timed from outside like a client would see it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_repository.layout import CheckpointSource, build_repository
from registry import ROUTES, family_of, pipeline_model_of, task_of
from stack.triton_server import Ports, TritonServer

from .metrics import cost_usd, psnr
from .perf_analyzer import request_values
from .report import Row
from .triton_stream import infer

# The benchmark's prompt and seed, for the eager and the served image alike.
PROMPT = "a lighthouse on a cliff at dawn, cinematic"
SEED = 42


@dataclass
class Served:
    end_to_end_s: float
    image: np.ndarray
    ready_s: float  # tritonserver start -> every model loaded
    first_image_s: float  # tritonserver start -> first image (loads + compilation)
    gpu_memory_gb: float  # device memory in use while serving
    warm_ready_s: float  # a second tritonserver start, compile caches on disk: start -> models loaded
    warm_first_image_s: float  # ... -> first image
    seconds_at: dict[str, float] = field(default_factory=dict)  # end to end of the other requests, by label

    def row(self, device: str, model: str, width: int, height: int, steps: int, eager_image: np.ndarray | None) -> Row:
        """The benchmark table's row of this served run, its image held against the eager one where there is one."""
        quality = psnr(self.image, eager_image) if eager_image is not None else float("nan")
        nan = float("nan")
        return Row(
            device=device,
            model=model,
            variant="served_triton",
            width=width,
            height=height,
            steps=steps,
            step_ms=nan,
            end_to_end_s=round(self.end_to_end_s, 3),
            peak_memory_gb=round(self.gpu_memory_gb, 2),
            mfu=nan,
            cost_usd=round(cost_usd(self.end_to_end_s), 6),
            psnr_vs_eager_db=round(quality, 2),
            compile_s=nan,
            ready_s=round(self.ready_s, 1),
            first_image_s=round(self.first_image_s, 1),
            warm_ready_s=round(self.warm_ready_s, 1),
            warm_first_image_s=round(self.warm_first_image_s, 1),
        )


def _request(route: str, width: int, height: int, overrides: Mapping[str, object] | None = None) -> dict:
    """The benchmark's request (its prompt and seed, so the image compares with the eager one): the route's
    defaults, and `overrides` by field name."""
    values = request_values(route, prompt=PROMPT, seed=SEED, width=width, height=height, **(overrides or {}))
    # text as bytes: triton_stream sends it as UTF-8 in a UINT8 tensor
    specs = task_of(ROUTES[route]).inputs
    return {s.name: (s.dtype, v.encode() if isinstance(v := values[s.name], str) else v) for s in specs}


def run_served(
    route: str,
    checkpoint_dir: Path,
    work: Path,
    width: int,
    height: int,
    repeats: int,
    log,  # noqa: ANN001
    *,
    others: Mapping[str, Mapping[str, object]] | None = None,
    restart: bool = True,
) -> Served:
    """Serve `route` from `checkpoint_dir`: cold start, `repeats` timed requests with the route's defaults, then
    each of `others` (label -> field overrides: {"8 steps": {"steps": 8}}) once to warm and once timed, its time in
    Served.seconds_at[label]; then, with `restart`, a warm restart."""
    import torch

    checkpoint = ROUTES[route].checkpoint
    family = family_of(checkpoint)
    repository = work / "model_repository"
    names = build_repository(
        repository,
        onnx_dir=work / "onnx-unused",
        checkpoints={checkpoint: CheckpointSource(checkpoint_dir, f"local:{checkpoint_dir} (random weights)")},
        profile="gpu",
        families=[family.name],
    )
    log(f"GPU repository: {', '.join(names)}")
    request = _request(route, width, height)
    pipeline = pipeline_model_of(route)
    server, ready_s, first_image_s = _cold_start(repository, work, pipeline, request, "cold", log)
    try:
        times = []
        for _ in range(repeats):
            t1 = time.perf_counter()
            out = infer(server.grpc_url, pipeline, request)
            times.append(time.perf_counter() - t1)
        profile = [ln for ln in (work / "triton-cold.log").read_text().splitlines() if " calls" in ln]
        if profile:  # RYLA_PROFILE_BLS=1: where the served time went, per component
            log("profile:\n" + "\n".join(profile[-6:]))
        free, total = torch.cuda.mem_get_info()
        log(f"served end to end: {[round(t, 3) for t in times]} s; model {out['MODEL'].tobytes().decode()}")
        seconds_at = {}
        for label, overrides in (others or {}).items():
            other = _request(route, width, height, overrides)
            infer(server.grpc_url, pipeline, other)  # new settings: schedulers, no compile
            t1 = time.perf_counter()
            infer(server.grpc_url, pipeline, other)
            seconds_at[label] = time.perf_counter() - t1
            log(f"served end to end, {label}: {seconds_at[label]:.3f} s")
    finally:
        server.stop()
    warm_ready_s = warm_first_image_s = float("nan")
    if restart:
        # A restart as a new container with the same Volume would see it: compiled artifacts cached on disk.
        server, warm_ready_s, warm_first_image_s = _cold_start(repository, work, pipeline, request, "warm", log)
        server.stop()
    return Served(
        end_to_end_s=float(np.median(times)),
        image=np.asarray(out[task_of(ROUTES[route]).output.pixels.name][0]),  # an image, or a clip's frames
        ready_s=ready_s,
        first_image_s=first_image_s,
        gpu_memory_gb=(total - free) / 2**30,
        warm_ready_s=warm_ready_s,
        warm_first_image_s=warm_first_image_s,
        seconds_at=seconds_at,
    )


def _cold_start(
    repository: Path,
    work: Path,
    pipeline: str,
    request: dict,
    label: str,
    log,  # noqa: ANN001
) -> tuple[TritonServer, float, float]:
    """Start tritonserver, time start -> ready -> first image; returns the running server and both times."""
    log_path = work / f"triton-{label}.log"
    log_path.unlink(missing_ok=True)
    server = TritonServer(repository, work / "backends", Ports(18000, 18001, 18002), log_path=log_path)
    t0 = time.perf_counter()
    server.start()
    try:
        ready_s = server.wait_ready(timeout_s=600)
        log(f"{label} start: tritonserver ready (all models loaded) in {ready_s:.1f}s")
        infer(server.grpc_url, pipeline, request)
        first_image_s = time.perf_counter() - t0
        log(f"{label} start: first image {first_image_s:.1f}s after start")
    except Exception:
        log("tritonserver log tail:\n" + "\n".join(log_path.read_text().splitlines()[-40:]))
        server.stop()
        raise
    return server, ready_s, first_image_s
