"""The API's PNG writer (api/encoding.py): files that two independent decoders read back to the exact pixels, at the
shapes generations have and at the edges of the format (one pixel, odd widths), with valid chunk checksums."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from api.encoding import encode_image, encode_png


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 1), (256, 256), (480, 832), (1328, 1328)])
def test_png_decodes_to_the_exact_pixels(shape: tuple[int, int]) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = encode_png(pixels)
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == shape[::-1]
        assert np.array_equal(np.asarray(image), pixels)
    with av.open(io.BytesIO(data), format="png_pipe") as container:  # FFmpeg's PNG decoder, not Pillow's
        (frame,) = container.decode(video=0)
        assert np.array_equal(frame.to_ndarray(format="rgb24"), pixels)


def test_png_of_a_smooth_image_is_compressed() -> None:
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((512, 512), 90.0)), -1).astype(np.uint8)
    data, mime = encode_image(pixels, "png", 95)
    assert mime == "image/png" and len(data) < pixels.nbytes / 20


@pytest.mark.parametrize("pixels", [np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.uint16)])
def test_png_takes_rgb_bytes_only(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        encode_png(pixels)
