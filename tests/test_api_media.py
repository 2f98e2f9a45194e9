"""api.media: base64 media fields to decoded images, every refusal an ApiError with its status, code and field.

Unit level, no server: each error is turned into the envelope a client would read (errors.envelope_bytes).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, WebPImagePlugin

from api import media
from api.errors import ApiError, envelope_bytes
from api.media import MediaLimits, check_same_size, decode_image, decode_image_array

W, H = 48, 32  # not square, so a swapped width and height shows
MIMES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (W, H), noise: bool = False, **save) -> bytes:
    rng = np.random.default_rng(0)
    if noise:  # incompressible, so a file cut in half really lacks pixel data
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    else:
        image = Image.new(mode, size, {"RGB": (200, 30, 60), "RGBA": (200, 30, 60, 128)}.get(mode, 90))
    buffer = io.BytesIO()
    if fmt == "WEBP":
        save.setdefault("lossless", True)
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(data: bytes, mime: str | None = None) -> str:
    text = base64.b64encode(data).decode()
    return f"data:{mime};base64,{text}" if mime else text


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG (CRCs right) whose IHDR claims width x height; its IDAT holds a few bytes, not the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_error(exc: pytest.ExceptionInfo[ApiError], status: int, field: str, *in_message: str) -> None:
    err = exc.value
    assert err.status == status, err.message
    body = json.loads(envelope_bytes(err.status, err.message, err.field))["error"]
    assert body["code"] == {413: "payload_too_large", 422: "invalid_request"}[status], body
    assert body["field"] == field, body
    for text in in_message:
        assert text in body["message"], body


def assert_invalid(value: object, *in_message: str, field: str = "source_image", **kwargs) -> None:
    with pytest.raises(ApiError) as exc:
        decode_image(value, field, **kwargs)  # type: ignore[arg-type]
    assert_error(exc, 422, field, *in_message)


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to decode pixel data fails the test: the refusal must come from the header alone."""

    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"pixel data of a {self.size} image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", load)  # WEBP has its own


# --- what decodes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [False, True], ids=["bare", "data-url"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_accepted_formats(fmt: str, prefix: bool) -> None:
    value = b64(encode(fmt), MIMES[fmt] if prefix else None)
    image = decode_image(value, "source_image")
    assert (image.size, image.mode) == ((W, H), "RGB")
    pixels = decode_image_array(value, "source_image")
    assert (pixels.shape, pixels.dtype, pixels.flags.writeable) == ((H, W, 3), np.uint8, True)
    # PNG and lossless WEBP are exact; JPEG close.
    assert np.abs(pixels.astype(int) - (200, 30, 60)).max() <= (0 if fmt != "JPEG" else 4)


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("PNG", "LA"), ("PNG", "1"), ("JPEG", "CMYK")]
)
def test_other_modes_become_rgb(fmt: str, mode: str) -> None:
    image = decode_image(b64(encode(fmt, mode)), "reference_images[0]")
    assert (image.size, image.mode) == ((W, H), "RGB")


def test_rgba_drops_alpha() -> None:
    pixels = decode_image_array(b64(encode("PNG", "RGBA")), "source_image")
    assert pixels.shape == (H, W, 3)
    assert tuple(pixels[0, 0]) == (200, 30, 60)


def test_mask_mode_l() -> None:
    mask = decode_image(b64(encode("PNG", "RGB")), "mask_image", mode="L")
    assert (mask.size, mask.mode) == ((W, H), "L")
    assert decode_image_array(b64(encode("PNG", "RGBA")), "mask_image", mode="L").shape == (H, W)


def test_16_bit_grayscale_keeps_its_range() -> None:
    # Pillow's own I;16 -> L clips everything over 255 to white; the high byte keeps mid-gray mid-gray.
    buffer = io.BytesIO()
    Image.fromarray(np.full((H, W), 0x8000, dtype=np.uint16)).save(buffer, format="PNG")
    mask = decode_image_array(b64(buffer.getvalue()), "mask_image", mode="L")
    assert mask.shape == (H, W) and int(mask[0, 0]) == 0x80


def test_whitespace_and_newlines_are_tolerated() -> None:
    wrapped = base64.encodebytes(encode("PNG", noise=True)).decode()  # 76-column lines
    assert "\n" in wrapped
    assert decode_image(f"  data:image/png;base64,\n{wrapped}\n", "source_image").size == (W, H)
    assert decode_image(wrapped.encode(), "source_image").size == (W, H)  # bytes too


def test_data_url_with_parameters_and_upper_case() -> None:
    assert decode_image("DATA:Image/PNG;name=a.png;BASE64," + b64(encode("PNG")), "source_image").size == (W, H)


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image = decode_image(b64(encode("JPEG", exif=exif.tobytes())), "source_image")
    assert image.size == (H, W)


# --- not base64 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "this is not base64!",
        "iVBORw0KGgo=AAAA",  # padding in the middle
        "iVBORw0K-_",  # URL-safe alphabet
        "iVBORw0KGgoé",  # not ASCII
        "data:image/png;base64,@@@@",
    ],
)
def test_not_base64(value: str) -> None:
    assert_invalid(value, "not valid base64")


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_truncated_base64(cut: int) -> None:
    # Cut mid-quantum: the length is no longer a multiple of 4. (Cut on a quantum boundary, the base64 is valid and
    # the image inside is truncated: test_truncated_image_data.)
    assert_invalid(b64(encode("PNG", noise=True))[:-cut], "not valid base64")


@pytest.mark.parametrize("value", ["", "   \n ", "data:image/png;base64,"])
def test_empty(value: str) -> None:
    assert_invalid(value, "empty")


def test_not_a_string() -> None:
    assert_invalid(12345, "base64 string")


@pytest.mark.parametrize("value", ["data:image/png,iVBORw0KGgo=", "data:image/png;base64"])
def test_data_url_that_is_not_base64(value: str) -> None:
    assert_invalid(value, "data:<mime>;base64,")


# --- not an accepted image ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"hello, this is plain text and not an image at all", b"\x00" * 64, b"{}"])
def test_base64_of_something_else(data: bytes) -> None:
    assert_invalid(b64(data), "not an image", "PNG, JPEG or WEBP")


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_unsupported_formats_are_named(fmt: str, name: str) -> None:
    assert_invalid(b64(encode(fmt, "RGB" if fmt != "GIF" else "P")), f"a {name} image", "PNG, JPEG or WEBP")


@pytest.mark.parametrize(("fmt", "claimed"), [("PNG", "image/jpeg"), ("JPEG", "image/png"), ("WEBP", "image/gif")])
def test_data_url_mime_must_match_the_data(fmt: str, claimed: str) -> None:
    assert_invalid(b64(encode(fmt), claimed), f"says {claimed}", f"a {fmt} image", field="reference_images[1]")


def test_data_url_mime_of_text_with_an_image() -> None:
    assert_invalid(b64(encode("PNG"), "text/plain"), "says text/plain")


# --- too many pixels: refused from the header, nothing decoded ------------------------------------------------------


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize("peek", [True, False], ids=["our-header-peek", "pillow-header"])
@pytest.mark.parametrize("pillow_bomb_limit", [True, False], ids=["pillow-limit", "pillow-limit-off"])
@pytest.mark.parametrize("size", [(100_000, 100_000), (5000, 5000), (4097, 4096)])
def test_huge_dimensions_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], peek: bool, pillow_bomb_limit: bool
) -> None:
    if not peek:  # Pillow's lazy open alone must catch it too
        monkeypatch.setattr(media, "_header_size", lambda data, fmt: None)
    if not pillow_bomb_limit:  # an operator may turn Pillow's process-wide check off; ours does not depend on it
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert_invalid(b64(png_header(*size)), "over the limit of", str(media.DEFAULT_MAX_PIXELS))


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize("peek", [True, False], ids=["our-header-peek", "pillow-header"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("lossy", [False, True], ids=["lossless", "lossy"])
def test_pixel_limit_for_each_format(monkeypatch: pytest.MonkeyPatch, fmt: str, lossy: bool, peek: bool) -> None:
    if not peek:
        monkeypatch.setattr(media, "_header_size", lambda data, fmt: None)
    data = encode(fmt, lossless=not lossy) if fmt == "WEBP" else encode(fmt)
    limits = MediaLimits(max_pixels=W * H - 1)
    assert_invalid(b64(data), f"{W}x{H} = {W * H} pixels", f"limit of {W * H - 1} pixels", limits=limits)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("lossy", [False, True], ids=["lossless", "lossy"])
def test_header_peek_agrees_with_pillow(fmt: str, lossy: bool) -> None:
    data = encode(fmt, size=(W + 1, H + 3), lossless=not lossy) if fmt == "WEBP" else encode(fmt, size=(W + 1, H + 3))
    assert media._header_size(data, fmt) == Image.open(io.BytesIO(data)).size == (W + 1, H + 3)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_no_pixel_decoding_fixture_catches_a_decode(fmt: str) -> None:
    # The fixture above proves the refusals came from the header only, so it must really catch a decode.
    with pytest.raises(AssertionError, match="pixel data"):
        decode_image(b64(encode(fmt)), "source_image")


def test_exactly_at_the_pixel_limit_decodes() -> None:
    assert decode_image(b64(encode("PNG")), "source_image", MediaLimits(max_pixels=W * H)).size == (W, H)


# --- truncated or corrupt pixel data -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_image_data(fmt: str) -> None:
    data = encode(fmt, noise=True, size=(128, 128))
    assert_invalid(b64(data[: len(data) // 2]), "truncated or corrupt", field="reference_images[1]")


@pytest.mark.parametrize(
    ("offset", "detail"), [(-20, "corrupt"), (12, "header is unreadable")], ids=["idat", "ihdr-name"]
)
def test_corrupt_png(offset: int, detail: str) -> None:
    data = bytearray(encode("PNG", noise=True))
    data[offset] ^= 0xFF  # inside the compressed pixel data (the zlib stream breaks), or in IHDR's chunk name
    assert_invalid(b64(bytes(data)), "truncated or corrupt", detail)


def test_header_only_png_is_corrupt() -> None:
    # Small enough to pass the pixel limit, but its IDAT holds no image: load() must fail, not hand back garbage.
    assert_invalid(b64(png_header(64, 64)), "truncated or corrupt")


# --- byte limit: 413 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [None, "image/png"])
def test_over_max_bytes_is_413_before_decoding(monkeypatch: pytest.MonkeyPatch, prefix: str | None) -> None:
    data = encode("PNG", noise=True)
    value = b64(data, prefix)

    def b64decode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("an oversized payload was base64-decoded")

    monkeypatch.setattr(media.base64, "b64decode", b64decode)
    with pytest.raises(ApiError) as exc:
        decode_image(value, "reference_images[1]", MediaLimits(max_bytes=len(data) - 1))
    assert_error(exc, 413, "reference_images[1]", f"{len(data)} bytes", f"limit of {len(data) - 1} bytes")


def test_exactly_max_bytes_decodes() -> None:
    data = encode("PNG", noise=True)
    for padding in range(3):  # file sizes whose base64 has 0, 1 or 2 "=": the estimate is exact for each
        sized = data + b"\0" * padding  # trailing bytes after IEND are ignored by PNG readers
        value = "\n".join(b64(sized)[i : i + 60] for i in range(0, len(b64(sized)), 60))
        assert decode_image(value, "source_image", MediaLimits(max_bytes=len(sized))).size == (W, H)


def test_default_limits() -> None:
    assert (media.DEFAULT_LIMITS.max_bytes, media.DEFAULT_LIMITS.max_pixels) == (25 * 1024 * 1024, 4096 * 4096)
    with pytest.raises(ValueError):
        MediaLimits(max_bytes=0)


# --- mask size ------------------------------------------------------------------------------------------------------


def test_mask_of_another_size() -> None:
    source = Image.new("RGB", (640, 480))
    with pytest.raises(ApiError) as exc:
        check_same_size(source, Image.new("L", (512, 512)))
    assert_error(exc, 422, "mask_image", "mask_image is 512x512 but source_image is 640x480")
    with pytest.raises(ApiError) as exc:  # arrays are H x W (x C)
        check_same_size(np.zeros((480, 640, 3), np.uint8), np.zeros((640, 480), np.uint8))
    assert_error(exc, 422, "mask_image", "mask_image is 480x640 but source_image is 640x480")


def test_mask_of_the_same_size() -> None:
    source = decode_image(b64(encode("JPEG")), "source_image")
    mask = decode_image(b64(encode("PNG", "L")), "mask_image", mode="L")
    check_same_size(source, mask)
    check_same_size(np.asarray(source), np.asarray(mask))
