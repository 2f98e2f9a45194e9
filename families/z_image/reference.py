"""What a diffusers user would run for a Z-Image route's request: the plain ZImagePipeline on the same tiny
checkpoint, prompt and seed, with api.md's meaning of each field written out by hand, so the contract tests
(tests/contract/) can hold served images against it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ZImagePipeline

from checkpoints.source import resolve
from loras import reference as lora_reference
from registry import ROUTES


@cache
def pipeline(checkpoint: str, root: Path) -> ZImagePipeline:
    pipe = ZImagePipeline.from_pretrained(resolve(checkpoint, "tiny", root).path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    """The route's request `body` (API field names) as a ZImagePipeline call; its images as H x W x 3 uint8."""
    r = ROUTES[route]
    cfg = body.get("cfg", r.cfg)
    kwargs: dict[str, Any] = {
        "prompt": lora_reference.prompt_of(body),
        "width": body.get("width", r.width),
        "height": body.get("height", r.height),
        "num_inference_steps": body.get("steps", r.steps),
        "num_images_per_prompt": body.get("num_images", 1),
        "max_sequence_length": 512,
        "generator": torch.Generator("cpu").manual_seed(body["seed"]),
        # Turbo runs without guidance; cfg above 1 is true CFG's scale, which is guidance_scale + 1 here
        # (the pipeline combines pos + guidance_scale * (pos - neg)).
        "guidance_scale": cfg - 1.0 if cfg > 1.0 else 0.0,
    }
    if cfg > 1.0:
        kwargs["negative_prompt"] = body.get("negative_prompt") or ""
    pipe = pipeline(r.checkpoint, Path(root))
    with lora_reference.adapters(pipe, body, lora_reference.store_of(root)):
        out = pipe(**kwargs)
    return [np.asarray(im.convert("RGB")) for im in out.images]


def _of(route: str) -> Callable[[Mapping[str, Any], Path], list[np.ndarray]]:
    return lambda body, root: images(route, body, root)


# Route -> (request body, tiny checkpoints root) -> the images plain diffusers makes of it.
REFERENCES = {path: _of(path) for path in ("/z-image-simple", "/z-image-danrisi", "/z-image-lora")}
