"""What a diffusers user would run for a FLUX route's request: the plain FluxPipeline on the same tiny checkpoint,
prompt and seed, with api.md's meaning of each field written out by hand (not derived from our task declarations),
so the contract tests (tests/contract/) can hold served images against it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FluxPipeline

from checkpoints.source import resolve
from loras import reference as lora_reference
from registry import ROUTES

# max_sequence_length of each checkpoint's T5 (the real pipelines' settings: schnell 256, dev 512).
MAX_SEQUENCE_LENGTH = {"flux-schnell": 256, "flux-dev": 512}


@cache
def pipeline(checkpoint: str, root: Path) -> FluxPipeline:
    pipe = FluxPipeline.from_pretrained(resolve(checkpoint, "tiny", root).path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    """The route's request `body` (API field names) as a FluxPipeline call; its images as H x W x 3 uint8."""
    r = ROUTES[route]
    cfg = body.get("cfg", r.cfg)
    kwargs: dict[str, Any] = {
        "prompt": lora_reference.prompt_of(body),
        "width": body.get("width", r.width),
        "height": body.get("height", r.height),
        "num_inference_steps": body.get("steps", r.steps),
        "num_images_per_prompt": body.get("num_images", 1),
        "max_sequence_length": MAX_SEQUENCE_LENGTH[r.checkpoint],
        "generator": torch.Generator("cpu").manual_seed(body["seed"]),
    }
    if r.checkpoint == "flux-dev":  # guidance-distilled: cfg is the guidance embedding's scale
        kwargs["guidance_scale"] = cfg
    else:  # schnell: no guidance up to cfg 1, true CFG against the negative prompt above
        kwargs["guidance_scale"] = 0.0
        if cfg > 1:
            kwargs |= {"true_cfg_scale": cfg, "negative_prompt": body.get("negative_prompt") or ""}
    pipe = pipeline(r.checkpoint, Path(root))
    with lora_reference.adapters(pipe, body, lora_reference.store_of(root)):
        out = pipe(**kwargs)
    return [np.asarray(im.convert("RGB")) for im in out.images]


def _of(route: str) -> Callable[[Mapping[str, Any], Path], list[np.ndarray]]:
    return lambda body, root: images(route, body, root)


# Route -> (request body, tiny checkpoints root) -> the images plain diffusers makes of it.
REFERENCES = {path: _of(path) for path in ("/flux", "/flux-dev", "/flux-lora")}
