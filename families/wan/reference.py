"""What a diffusers user would run for a Wan route's request: the plain WanPipeline on the same tiny checkpoint,
prompt and seed, with api.md's meaning of each field written out by hand, so the contract tests (tests/contract/)
can hold served clips against it frame by frame."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from diffusers import WanPipeline, WanVACEPipeline
from PIL import Image, ImageSequence

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


def _clip_frames(value: str) -> list[Image.Image]:
    """A base64 clip's frames, read by Pillow (animated WebP, GIF) or PyAV (MP4, WebM, ...)."""
    data = base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value)
    if data[:4] == b"RIFF" or data[:3] == b"GIF":
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_image().convert("RGB") for frame in container.decode(video=0)]


def reference_images(body: Mapping[str, Any], num_frames: int) -> list[Image.Image]:
    """api.md's reference videos as VACE's reference images: of one clip its first, middle and last frames, or its
    first and last when the new clip has two latent frames (5 frames); the first frame of each of several (a clip of
    fewer frames gives them all)."""
    clips = [body["reference_video"]] if body.get("reference_video") else list(body["reference_videos"])
    images = []
    for clip in clips:
        frames = _clip_frames(clip)
        last = len(frames) - 1
        one_clip = [0, round(last / 2), last] if num_frames >= 9 else [0, last]
        picks = one_clip if len(clips) == 1 else [0]
        images += frames if len(frames) <= len(picks) else [frames[i] for i in picks]
    return images


def r2v(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    """The r2v request as a WanVACEPipeline call: no control clip (VACE's default: all frames to generate), the
    reference videos' key frames as reference_images."""
    r = ROUTES[route]
    pipe = vace_pipeline(r.checkpoint, Path(root))
    num_frames = body.get("num_frames", body.get("length", r.num_frames))
    frames = pipe(
        prompt=body["prompt"],
        negative_prompt=body.get("negative_prompt") or "",
        reference_images=reference_images(body, num_frames),
        width=body.get("width", r.width),
        height=body.get("height", r.height),
        num_frames=num_frames,
        num_inference_steps=body.get("steps", r.steps),
        guidance_scale=body.get("cfg", r.cfg),
        max_sequence_length=512,
        generator=torch.Generator("cpu").manual_seed(body["seed"]),
        output_type="np",
    ).frames
    return [(np.asarray(clip, dtype=np.float32) * 255).round().astype(np.uint8) for clip in frames]


@cache
def vace_pipeline(checkpoint: str, root: Path) -> WanVACEPipeline:
    pipe = WanVACEPipeline.from_pretrained(resolve(checkpoint, "tiny", root).path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _of(route: str) -> Callable[[Mapping[str, Any], Path], list[np.ndarray]]:
    return lambda body, root: video(route, body, root)


# Route -> (request body, tiny checkpoints root) -> the clips plain diffusers makes of it.
REFERENCES = {path: _of(path) for path in ("/wan2.6", "/wan2.6-lora")}
REFERENCES["/wan2.6-r2v"] = lambda body, root: r2v("/wan2.6-r2v", body, root)

# Lossless animated WebP (output_quality 100), so served frames compare with the reference's to float noise; five
# frames keep a CPU generation to seconds.
SAMPLE_OVERRIDES = {path: {"output_quality": 100, "num_frames": 5} for path in REFERENCES}
