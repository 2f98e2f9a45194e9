"""Images in: a request's base64 media field turned into a decoded image, checked before any costly step.

api.md, "Request fields": media inputs are base64 strings, with or without a `data:<mime>;base64,` prefix, checked
for real format, byte size and pixel count before they are decoded in full. Every failure is an ApiError naming the
request's field path (`source_image`, `reference_images[1]`, `mask_image`): 413 payload_too_large for bytes over the
limit, 422 invalid_request for everything else.

The order is cheapest first, so a hostile input costs as little as possible:
  1. the base64 length gives the file size exactly, before anything is decoded (413);
  2. base64 decoding, strict alphabet and padding (422);
  3. magic bytes give the real format: PNG, JPEG or WEBP; GIF, BMP, TIFF... are named and refused (422);
  4. the pixel size from the file header, read by our own parser (a few fixed offsets) and again by Pillow's lazy
     `Image.open`, which reads the header only; over the limit is a 422 before a pixel is decoded. Our peek runs first
     because Pillow's WEBP plugin allocates its canvas inside `open`, and it keeps Pillow's DecompressionBombWarning
     out of the log; Pillow's own bomb check (Image.MAX_IMAGE_PIXELS, process-wide, left as is) is a backstop;
  5. `load()` decodes the pixels; truncated or corrupt data is a 422.

Decoding is CPU-bound (tens of milliseconds for a large PNG or JPEG): async callers run it off the event loop,
`await run_in_threadpool(decode_image, body.source_image, "source_image", limits)`, as generate.py does for encoding.
Nothing here touches process-wide Pillow settings, so concurrent calls in the thread pool are safe.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ApiError

Mode = Literal["RGB", "L"]

# 25 MiB of file per media input: a phone photo is 2-10 MB. In practice the request body limit (Settings.max_body_bytes,
# 32 MiB of base64 = 24 MiB of file) binds first for a single input; this one bounds each of several inputs.
DEFAULT_MAX_BYTES = 25 * 1024 * 1024
# 4096^2 = 16.8 Mpx = 48 MiB as RGB. It protects memory, not the model's range: the pipelines resize an edit source to
# their own profile.
DEFAULT_MAX_PIXELS = 4096 * 4096

# Accepted formats: Pillow's format name -> the MIME types a data: prefix may give for it.
ACCEPTED_MIMES: dict[str, frozenset[str]] = {
    "PNG": frozenset({"image/png"}),
    "JPEG": frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}),
    "WEBP": frozenset({"image/webp"}),
}
ACCEPTED_TEXT = "PNG, JPEG or WEBP"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers, which carry the size (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# What Pillow raises for a malformed or truncated file, from open() or load() (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True)
class MediaLimits:
    """Per media input: max_bytes of the file (after base64), max_pixels = width x height."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError(f"MediaLimits must be positive, got {self}")


DEFAULT_LIMITS = MediaLimits()


def decode_image(
    value: str | bytes, field: str, limits: MediaLimits = DEFAULT_LIMITS, mode: Mode = "RGB"
) -> Image.Image:
    """A base64 image (optionally a data: URL) as a fully loaded PIL image in `mode`: "RGB", or "L" for masks.

    Raises ApiError 413 (file over limits.max_bytes) or 422 (not base64, not an accepted image, prefix disagrees
    with the data, over limits.max_pixels, truncated or corrupt), naming `field`. CPU-bound: run it in a thread.
    """
    payload, declared_mime = _split_data_url(value, field)
    data = _b64decode(payload, field, limits.max_bytes)
    fmt = _sniff_format(data, field)
    if declared_mime and declared_mime not in ACCEPTED_MIMES[fmt]:
        raise ApiError(422, f"{field}: the data: prefix says {declared_mime} but the data is a {fmt} image", field)
    size = _header_size(data, fmt)
    if size is not None:
        _check_pixels(size, field, limits.max_pixels)
    try:
        # formats=[fmt]: only the plugin for the sniffed format parses these bytes, no guessing across plugins.
        with Image.open(io.BytesIO(data), formats=[fmt]) as image:
            _check_pixels(image.size, field, limits.max_pixels)  # the header as Pillow read it; still nothing decoded
            image.load()
            # Phone JPEGs store the camera's rotation in EXIF: apply it, as diffusers' load_image does, so the model
            # sees the picture the user sees (and the mask size check compares what the user drew on).
            ImageOps.exif_transpose(image, in_place=True)
            return _convert(image, mode)
    except Image.DecompressionBombError:
        # Pillow's backstop fired (over 2 x Image.MAX_IMAGE_PIXELS) where our header peek found no size.
        raise ApiError(422, f"{field}: the image is over the limit of {limits.max_pixels} pixels", field) from None
    except _DECODE_ERRORS as exc:
        # UnidentifiedImageError says "cannot identify image file <_io.BytesIO object at 0x...>": no use to a client.
        detail = "its header is unreadable" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ApiError(422, f"{field}: the {fmt} image is truncated or corrupt ({detail})", field) from None


def decode_image_array(
    value: str | bytes, field: str, limits: MediaLimits = DEFAULT_LIMITS, mode: Mode = "RGB"
) -> np.ndarray:
    """decode_image as a uint8 array: H x W x 3 for "RGB", H x W for "L"."""
    # np.array, not asarray: asarray of a PIL image is read-only, which torch.from_numpy warns about.
    return np.array(decode_image(value, field, limits, mode))


def check_same_size(
    image: Image.Image | np.ndarray,
    mask: Image.Image | np.ndarray,
    field: str = "mask_image",
    image_field: str = "source_image",
) -> None:
    """422 naming `field` unless the mask has the image's width and height (api.md: same size as source_image)."""
    (iw, ih), (mw, mh) = _size_of(image), _size_of(mask)
    if (iw, ih) != (mw, mh):
        raise ApiError(422, f"{field} is {mw}x{mh} but {image_field} is {iw}x{ih}; they must be the same size", field)


def _size_of(image: Image.Image | np.ndarray) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    return image.size


def _split_data_url(value: str | bytes, field: str) -> tuple[str, str | None]:
    """(base64 payload, MIME type of a data: prefix or None)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise ApiError(422, f"{field} is not valid base64", field) from None
    if not isinstance(value, str):
        raise ApiError(422, f"{field} must be a base64 string", field)
    value = value.strip()
    if value[:5].lower() != "data:":
        return value, None
    header, comma, payload = value.partition(",")
    params = [p.strip().lower() for p in header[5:].split(";")]
    if not comma or params[-1] != "base64":
        raise ApiError(422, f"{field}: a data: URL must be data:<mime>;base64,<data>", field)
    return payload, params[0] or None


def _b64decode(payload: str, field: str, max_bytes: int) -> bytes:
    # Clients wrap long base64 at 76 columns (MIME) or pretty-print it: whitespace is not data.
    payload = "".join(payload.split())
    if not payload:
        raise ApiError(422, f"{field} is empty", field)
    # Exact size of valid base64, known before decoding: refuse an oversized file without materialising it.
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > max_bytes:
        raise _too_large(field, size, max_bytes)
    try:
        # validate=True: a character outside the standard alphabet, or padding in the middle, is an error, not
        # silently skipped; a length that is not a multiple of 4 (cut off, or unpadded) fails the padding check.
        data = base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ApiError(422, f"{field} is not valid base64 ({exc})", field) from None
    if len(data) > max_bytes:  # the estimate is exact for valid input; kept so the limit never rests on arithmetic
        raise _too_large(field, len(data), max_bytes)
    return data


def _too_large(field: str, size: int, max_bytes: int) -> ApiError:
    return ApiError(413, f"{field} is {size} bytes, over the limit of {max_bytes} bytes", field)


def _sniff_format(data: bytes, field: str) -> str:
    """The real format from the magic bytes: one of ACCEPTED_MIMES, else a 422 naming what it is, if we know."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    refused = None
    if data[:6] in (b"GIF87a", b"GIF89a"):
        refused = "GIF"
    elif data[:2] == b"BM":
        refused = "BMP"
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        refused = "TIFF"
    elif data[4:8] == b"ftyp":
        refused = "HEIF/AVIF"
    if refused:
        raise ApiError(422, f"{field} is a {refused} image; send {ACCEPTED_TEXT}", field)
    raise ApiError(422, f"{field} is not an image ({ACCEPTED_TEXT})", field)


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the header's fixed fields, or None where the layout is unusual (Pillow then decides)."""
    if fmt == "PNG":
        # The first chunk must be IHDR: width, height as big-endian uint32 at bytes 16 and 20.
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
    elif fmt == "WEBP":
        chunk = data[12:16]
        if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # lossless: 14-bit sizes minus one, packed
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas sizes minus one
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    elif fmt == "JPEG":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walks the marker segments up to the first start-of-frame, whose header holds height and width."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        elif marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _check_pixels(size: tuple[int, int], field: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ApiError(
            422, f"{field} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} pixels", field
        )


def _convert(image: Image.Image, mode: Mode) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grayscale: Pillow's convert clips at 255 (almost all white); keep the high byte instead.
        high = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(high)
    # RGBA / LA / P / CMYK / 1 -> RGB or L; alpha is dropped, as diffusers' load_image does. Always a new image (a
    # copy for the same mode): the opened one is closed, and its pixels with it, when decode_image's `with` ends.
    return image.convert(mode)
