"""How the model repository names TensorRT plans: by GPU architecture and TensorRT version, in the one version
folder a tensorrt_plan model's config pins. The engine builder (export/tensorrt_build.py) writes plans under these
names; config.py lists them in `cc_model_filenames`."""

from __future__ import annotations

import re
from collections.abc import Iterable

PLAN_VERSION = "1"  # the Triton model version folder plans go in (config.pbtxt pins version 1)


def _sm(compute_capability: str) -> str:
    if not re.fullmatch(r"\d+\.\d+", compute_capability):
        raise ValueError(f"compute capability {compute_capability!r}: expected 'major.minor', e.g. '9.0'")
    return "sm" + compute_capability.replace(".", "")


def plan_filename(trt_version: str, compute_capability: str) -> str:
    """'model.sm90.trt10.9.0.plan': a plan only runs on the GPU architecture and the TensorRT version that built it,
    so both are in its name, and Triton picks it by the GPU's compute capability (cc_model_filenames)."""
    if not re.fullmatch(r"\d+(\.\d+)*", trt_version):
        raise ValueError(f"TensorRT version {trt_version!r}: expected dotted digits, e.g. '10.9.0'")
    return f"model.{_sm(compute_capability)}.trt{trt_version}.plan"


def cc_model_filenames(trt_version: str, capabilities: Iterable[str]) -> dict[str, str]:
    """config.pbtxt's `cc_model_filenames` for a tensorrt_plan model: compute capability -> plan file. On a GPU
    whose capability is not listed Triton falls back to the default `model.plan`, which the builder never writes,
    so the model fails to load (not ready) instead of loading a plan built for another GPU or TensorRT."""
    files = {cc: plan_filename(trt_version, cc) for cc in set(capabilities)}  # validates each cc first
    return {cc: files[cc] for cc in sorted(files, key=lambda cc: tuple(int(p) for p in cc.split(".")))}
