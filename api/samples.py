"""A small valid request body for any route, from its task's declared sample (registry/tasks.py): what the
warm-up, the smoke test and the tests send when the body itself is not under test."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from registry import Kind, Route, SampleMedia, task_of

SAMPLE_VIDEO_FRAMES = (96, 128, 160)  # the greys of a sample clip's frames: each key frame differs


def sample_pixels(media: SampleMedia, kind: Kind) -> np.ndarray:
    """A flat mid-grey image; for a mask a white centre square on black (the area to repaint); for a video three
    frames of different greys (F x H x W x 3: also its key frames, the layout it crosses in)."""
    w, h = media.width, media.height
    if kind is Kind.MASK:
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        return mask
    if kind is Kind.VIDEO:
        return np.stack([np.full((h, w, 3), grey, dtype=np.uint8) for grey in SAMPLE_VIDEO_FRAMES])
    return np.full((h, w, 3), 128, dtype=np.uint8)


def png_base64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def media_base64(pixels: np.ndarray, kind: Kind) -> str:
    """Sample media as a request carries it: images as PNG, a clip as lossless animated WebP."""
    if kind is Kind.VIDEO:
        from .video_encoding import encode_video

        data, _ = encode_video(pixels, "webp", 100, 8)
        return base64.b64encode(data).decode()
    return png_base64(pixels)


def sample_body(
    route: Route, steps: int | None = None, size: int | None = None, seed: int | None = 0
) -> dict[str, Any]:
    """`route`'s sample request as JSON: media base64 (media_base64) of the route's default size (or size x size, which
    also sets the output size where the request sets it), `steps` steps, `seed` (None: left out)."""
    spec = task_of(route)
    values = spec.sample_values(route, steps=steps, size=size, seed=seed)
    kinds = {f.name: f.kind for f in spec.fields}
    return {
        name: media_base64(sample_pixels(value, kinds[name]), kinds[name]) if isinstance(value, SampleMedia) else value
        for name, value in values.items()
    }
