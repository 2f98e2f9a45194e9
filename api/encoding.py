"""Images out: encoded with Pillow into the format the client asked for, labelled truthfully."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .schemas import IMAGE_FORMATS


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> tuple[bytes, str]:
    """pixels: H x W x 3 uint8. Returns the bytes and their MIME type."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, "RGB")
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=3)  # lossless; level 3 is far faster than the default 6
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="WEBP", quality=quality)
    return buffer.getvalue(), IMAGE_FORMATS[fmt]
