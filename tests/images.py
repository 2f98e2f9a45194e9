"""Images in tests: decoding what the API answers, comparing it with a reference, and inputs to send."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

# ONNX Runtime vs torch float noise only: at most 2 of 255 levels on any pixel.
MAX_PIXEL_DIFF = 2


def decode(data: bytes) -> np.ndarray:
    """An answered image as H x W x 3; an animated one (a video answer's WebP) as F x H x W x 3."""
    image = Image.open(io.BytesIO(data))
    if getattr(image, "n_frames", 1) == 1:
        return np.asarray(image.convert("RGB"))
    frames = []
    for i in range(image.n_frames):
        image.seek(i)
        frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(width: int, height: int, phase: float = 0.0) -> Image.Image:
    """A smooth colour image with structure in both directions: an input an edit visibly changes."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(phase + x / 9.0)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))
