"""Images out, labelled with their true MIME type: PNG written here (a few chunks around one deflate stream, the
deflate ISA-L's), JPEG and WebP through Pillow. Pillow's PNG encoder spends most of its time outside deflate, in its
row filtering and encoder loop; this one filters in numpy (Sub, on every row) and makes files of about the same size
an order of magnitude faster (perf/results/cpu/encode.md, `python -m perf.encode`).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from isal import isal_zlib
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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUB = 1  # PNG filter type 1: each byte minus the byte of the same channel one pixel to its left
_DEFLATE_LEVEL = 1  # ISA-L's levels are 0-3; 1 was the fastest and no larger than 2 or 3 on generated images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(pixels: np.ndarray) -> bytes:
    """pixels: H x W x 3 uint8 -> a PNG file (8-bit RGB, no interlace), every row Sub-filtered."""
    height, width, channels = pixels.shape
    if channels != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.dtype} {pixels.shape}")
    rows = np.ascontiguousarray(pixels).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = _SUB
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # uint8 arithmetic wraps mod 256, as PNG's does
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, adaptive, none
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", isal_zlib.compress(filtered.data, _DEFLATE_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> tuple[bytes, str]:
    """pixels: H x W x 3 uint8. Returns the encoded bytes and their MIME type. CPU-bound: call it off the loop."""
    pil_format, mime = IMAGE_FORMATS[fmt]
    if pil_format == "PNG":  # lossless, so quality does not apply
        return encode_png(pixels), mime
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=pil_format, quality=quality)
    return buffer.getvalue(), mime
