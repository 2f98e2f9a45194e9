"""Which TensorRT builds a plan, and the few things that differ between them; the builder is one code path.

- "trt": the datacenter TensorRT (10.13 in the NGC Triton image on Modal, 11 later), package `tensorrt`. It builds
  for the GPU it runs on (a plan is tuned on that GPU) and its plans serve on Hopper.
- "trtrtx": TensorRT for RTX (`tensorrt-rtx-cu13-*` on PyPI, package `tensorrt_rtx_bindings`). It builds ahead of
  time without a GPU, for compute capabilities it is told (7.5 ... 12.1, not Hopper); running a plan needs a GPU.
  The CPU install (`make test`) has it, so every exported component meets a real ONNX parser and builder in CI.

Both build strongly typed networks only (TensorRT 11 and TensorRT for RTX removed weak typing; 10.13 has both):
precision comes from the graph's types and Q/DQ nodes, never from builder flags. A plan's name and manifest carry
the flavour and version (model_repository/plans.py), so a plan built here never loads on Modal.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from dataclasses import dataclass
from typing import Any

# flavour -> Python package, in the order `installed()` prefers them: the datacenter TensorRT where it is.
PACKAGES = {"trt": "tensorrt", "trtrtx": "tensorrt_rtx_bindings"}
MIN_MAJOR = {"trt": 10, "trtrtx": 1}


class TensorRTMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class TensorRT:
    flavour: str  # a key of PACKAGES
    version: str
    module: Any  # the imported package (trt.Builder, trt.OnnxParser, ...)

    @property
    def builds_without_gpu(self) -> bool:
        return self.flavour == "trtrtx"

    @property
    def timing_cache(self) -> bool:
        """TensorRT for RTX picks kernels when the plan first runs: its timing cache calls are no-ops."""
        return self.flavour == "trt"

    def refit_problem(self) -> str | None:
        """Why a refittable plan cannot be built here (None: it can). Measured with TensorRT for RTX 1.7.1: REFIT,
        REFIT_IDENTICAL and REFIT_INDIVIDUAL with marked weights all fail in its compiler with "MyelinCheckException:
        graph_jit.cpp:278: CHECK(status == CUDA_SUCCESS)" on a machine without a GPU; without them the same graphs
        build."""
        if self.builds_without_gpu:
            return (
                f"TensorRT for RTX {self.version} cannot build a refittable plan without a GPU (its compiler calls "
                "CUDA for refittable weights); refittable plans are built by the datacenter TensorRT on Modal"
            )
        return None

    def compute_capabilities(self) -> tuple[str, ...]:
        """What this TensorRT can build for here: the local GPU's capability (datacenter), or the targets TensorRT for
        RTX lists (ComputeCapability.SM75 -> '7.5', ...)."""
        if not self.builds_without_gpu:
            return (device_compute_capability(),)
        names = [n for n in self.module.ComputeCapability.__members__ if re.fullmatch(r"SM\d{2,3}", n)]
        return tuple(f"{n[2:-1]}.{n[-1]}" for n in names)

    def target(self, config: Any, compute_capability: str) -> None:
        """Point the builder config at `compute_capability`, or refuse: the datacenter TensorRT builds for the GPU it
        runs on only; TensorRT for RTX for one of the capabilities it lists."""
        if not self.builds_without_gpu:
            here = device_compute_capability()
            if compute_capability != here:
                raise TensorRTMissing(
                    f"a plan for compute capability {compute_capability} must be built on such a GPU; this is {here}"
                )
            return
        member = "SM" + compute_capability.replace(".", "")
        if member not in self.module.ComputeCapability.__members__:
            raise TensorRTMissing(
                f"TensorRT for RTX {self.version} builds for {list(self.compute_capabilities())}, "
                f"not {compute_capability} (Hopper plans come from the datacenter TensorRT on Modal)"
            )
        config.num_compute_capabilities = 1
        if not config.set_compute_capability(self.module.ComputeCapability.__members__[member], 0):
            raise TensorRTMissing(f"TensorRT for RTX refused compute capability {compute_capability}")


def load(flavour: str) -> TensorRT:
    """The TensorRT of `flavour`, imported; TensorRTMissing when it is not installed or too old."""
    if flavour not in PACKAGES:
        raise ValueError(f"TensorRT flavour {flavour!r}: expected one of {list(PACKAGES)}")
    try:
        module = importlib.import_module(PACKAGES[flavour])
    except ImportError as e:
        raise TensorRTMissing(
            f"TensorRT flavour {flavour!r}: the `{PACKAGES[flavour]}` package is not installed"
        ) from e
    version = module.__version__
    if int(version.split(".")[0]) < MIN_MAJOR[flavour]:
        raise TensorRTMissing(f"{PACKAGES[flavour]} {version}: this builder needs {MIN_MAJOR[flavour]} or newer")
    return TensorRT(flavour, version, module)


def installed() -> TensorRT:
    """The datacenter TensorRT where it is installed (Modal's build containers), else TensorRT for RTX (the CPU
    install); TensorRTMissing naming both when neither is."""
    reasons = []
    for flavour in PACKAGES:
        try:
            return load(flavour)
        except TensorRTMissing as e:
            reasons.append(str(e))
    raise TensorRTMissing("no TensorRT here: " + "; ".join(reasons))


def device_compute_capability(device: int = 0) -> str:
    """'9.0' for an H100: from nvidia-smi (no CUDA context needed), else torch."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={device}", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        if re.fullmatch(r"\d+\.\d+", out):
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return f"{major}.{minor}"
    except ImportError:
        pass
    raise TensorRTMissing("no CUDA GPU found: the datacenter TensorRT builds a plan on the GPU model it will run on")
