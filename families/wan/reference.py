"""What a diffusers user would run for a Wan route's request: the plain WanPipeline on the same tiny checkpoint,
prompt and seed, with api.md's meaning of each field written out by hand, so the contract tests (tests/contract/)
can hold served clips against it frame by frame."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanPipeline

from checkpoints.source import resolve
from loras import reference as lora_reference
from registry import ROUTES


@cache
def pipeline(checkpoint: str, root: Path) -> WanPipeline:
    pipe = WanPipeline.from_pretrained(resolve(checkpoint, "tiny", root).path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def video(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    """The route's request `body` (API field names) as a WanPipeline call; its clip as F x H x W x 3 uint8."""
    r = ROUTES[route]
    cfg = body.get("cfg", r.cfg)
    kwargs: dict[str, Any] = {
        "prompt": lora_reference.prompt_of(body),
        "width": body.get("width", r.width),
        "height": body.get("height", r.height),
        "num_frames": body.get("num_frames", body.get("length", r.num_frames)),
        "num_inference_steps": body.get("steps", r.steps),
        "max_sequence_length": 512,
        "generator": torch.Generator("cpu").manual_seed(body["seed"]),
        "guidance_scale": cfg,  # true CFG above 1, against the negative prompt ("" when none)
        "negative_prompt": body.get("negative_prompt") or "",
        "output_type": "np",
    }
    pipe = pipeline(r.checkpoint, Path(root))
    with lora_reference.adapters(pipe, body, lora_reference.store_of(root), prefix="wan"):
        frames = pipe(**kwargs).frames
    return [(np.asarray(clip, dtype=np.float32) * 255).round().astype(np.uint8) for clip in frames]


def _of(route: str) -> Callable[[Mapping[str, Any], Path], list[np.ndarray]]:
    return lambda body, root: video(route, body, root)


# Route -> (request body, tiny checkpoints root) -> the clips plain diffusers makes of it.
REFERENCES = {path: _of(path) for path in ("/wan2.6", "/wan2.6-lora")}

# Lossless animated WebP (output_quality 100), so served frames compare with the reference's to float noise; five
# frames keep a CPU generation to seconds.
SAMPLE_OVERRIDES = {path: {"output_quality": 100, "num_frames": 5} for path in REFERENCES}
