"""How the model repository names TensorRT plans: by GPU architecture, TensorRT flavour and version, in the one
version folder a tensorrt_plan model's config pins. The engine builder (export/tensorrt_build.py) writes plans under
these names; config.py lists them in `cc_model_filenames`."""

from __future__ import annotations

import re
from collections.abc import Iterable

PLAN_VERSION = "1"  # the Triton model version folder plans go in (config.pbtxt pins version 1)
# export/tensorrt_flavours.py: the datacenter TensorRT ("trt", what Triton's tensorrt backend links) and TensorRT for
# RTX ("trtrtx", the CPU install's builder); the flavour is part of a plan's name so neither loads the other's plan.
FLAVOURS = ("trt", "trtrtx")
SERVING_FLAVOUR = "trt"


def _sm(compute_capability: str) -> str:
    if not re.fullmatch(r"\d+\.\d+", compute_capability):
        raise ValueError(f"compute capability {compute_capability!r}: expected 'major.minor', e.g. '9.0'")
    return "sm" + compute_capability.replace(".", "")


def plan_filename(flavour: str, trt_version: str, compute_capability: str) -> str:
    """'model.sm90.trt10.13.3.9.plan', 'model.sm89.trtrtx1.7.1.116.plan': a plan only runs on the GPU architecture
    and the TensorRT (flavour and version) that built it, so all three are in its name, and Triton picks it by the
    GPU's compute capability (cc_model_filenames)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"TensorRT flavour {flavour!r}: expected one of {FLAVOURS}")
    if not re.fullmatch(r"\d+(\.\d+)*", trt_version):
        raise ValueError(f"TensorRT version {trt_version!r}: expected dotted digits, e.g. '10.13.3.9'")
    return f"model.{_sm(compute_capability)}.{flavour}{trt_version}.plan"


def cc_model_filenames(trt_version: str, capabilities: Iterable[str], flavour: str = SERVING_FLAVOUR) -> dict[str, str]:
    """config.pbtxt's `cc_model_filenames` for a tensorrt_plan model: compute capability -> plan file. On a GPU
    whose capability is not listed Triton falls back to the default `model.plan`, which the builder never writes,
    so the model fails to load (not ready) instead of loading a plan built for another GPU or TensorRT."""
    files = {cc: plan_filename(flavour, trt_version, cc) for cc in set(capabilities)}  # validates each cc first
    return {cc: files[cc] for cc in sorted(files, key=lambda cc: tuple(int(p) for p in cc.split(".")))}
