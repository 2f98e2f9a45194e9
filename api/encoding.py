"""Images out: encoded with Pillow into the format the client asked for, labelled with their true MIME type."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from registry import tasks

# output_format (registry/tasks.py's IMAGE_FORMATS) -> (Pillow format, MIME type).
IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "image/png"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
if set(IMAGE_FORMATS) != set(tasks.IMAGE_FORMATS):
    raise ImportError(f"output formats {sorted(tasks.IMAGE_FORMATS)} declared, {sorted(IMAGE_FORMATS)} encoded")


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> tuple[bytes, str]:
    """pixels: H x W x 3 uint8. Returns the encoded bytes and their MIME type. CPU-bound: call it off the loop."""
    pil_format, mime = IMAGE_FORMATS[fmt]
    image = Image.fromarray(np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    if pil_format == "PNG":
        # Lossless, so quality does not apply; level 3 is several times faster than the default 6 at ~5% size.
        image.save(buffer, format="PNG", compress_level=3)
    else:
        image.save(buffer, format=pil_format, quality=quality)
    return buffer.getvalue(), mime
