"""Video out: a generated clip (F x H x W x 3 uint8 frames) encoded as animated WebP or H.264 MP4, with its MIME type.

api.md, "Request fields": video answers are `webp` (animated, the default the product reads) or `mp4`, quality 1 to
100. The mirror of api/encoding.py for images; the route (not this module) reports width, height, num_frames and fps.

- WebP: each frame is encoded by Pillow as a lossy still (`quality` applies, method 2) and the frames are put into an
  animated WebP container here, every one a full key frame (no sub-rectangles, no blending) lasting 1000/fps ms,
  looping forever. Not Pillow's animation encoder: libwebp's merges consecutive frames that are identical or nearly
  so (within a quality-dependent tolerance) into one longer frame, so a near-static clip came back with fewer frames
  than num_frames says; muxing the stills ourselves keeps one frame per frame and, measured at 832x480, is twice as
  fast for the same bytes.
- MP4: H.264 (libx264, preset "faster", yuv420p, BT.709 tagged) through PyAV, `fps` as the stream's rate, `quality`
  mapped onto CRF (_crf), the index (moov) first (`+faststart`) so a browser starts playing before the download ends.
  yuv420p needs even sizes: an odd width or height is padded by one edge-replicated pixel (encoded_size says so).

Encoding is CPU-bound (about a second for 81 frames at 832x480 on 2 cores, either format): async callers run it off
the event loop, `await run_in_threadpool(encode_video, frames, fmt, quality, fps)`, as generate.py does for images.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image

from registry import tasks

MIME_TYPES = {"webp": "image/webp", "mp4": "video/mp4"}  # output_format -> MIME type
VIDEO_FORMATS = tuple(MIME_TYPES)
if set(VIDEO_FORMATS) != set(tasks.VIDEO_FORMATS):
    raise ImportError(f"video formats {sorted(tasks.VIDEO_FORMATS)} declared, {sorted(VIDEO_FORMATS)} encoded")

# WebP: method 2 of 0 (fast) to 6 (small); at 832x480 it is ~2x faster than Pillow's default 4 for about the same
# size, and 0 is ~6% larger for ~1.5x less time. Against seconds of GPU time per clip, 2 is the balance.
WEBP_METHOD = 2
# Quality 100 is lossless WebP (registry: output_quality), the pixels exactly as generated; lossy WebP's 4:2:0 chroma
# moves colours at edges by tens of levels even at quality 100.
LOSSLESS_QUALITY = 100
# x264 "faster": CRF holds the quality, the preset trades file size for time. 81 frames at 832x480 took 1.4-1.7 s
# against "medium"'s 2.6-3.0 s (2 shared cores), for a file of about the same size.
X264_PRESET = "faster"
# The CRF range quality maps onto: 100 -> 11 (transparent to the eye) .. 1 -> 51 (x264's worst). Never 0: lossless
# H.264 needs the High 4:4:4 Predictive profile, which browsers do not play.
CRF_BEST, CRF_WORST = 11, 51
# libavutil's AVColorSpace value for BT.709 (PyAV's Colorspace enum holds swscale's constants, not these).
AVCOL_SPC_BT709 = 1


def encode_video(frames: np.ndarray, fmt: str, quality: int, fps: int) -> tuple[bytes, str]:
    """frames: F x H x W x 3 uint8 (RGB). Returns the encoded bytes and their MIME type. CPU-bound: call it off the
    loop. A bad argument is a ValueError (a server bug: the route validated the request)."""
    _check_args(frames, fmt, quality, fps)
    frames = np.ascontiguousarray(frames)
    data = _encode_webp(frames, quality, fps) if fmt == "webp" else _encode_mp4(frames, quality, fps)
    return data, MIME_TYPES[fmt]


def encoded_size(fmt: str, width: int, height: int) -> tuple[int, int]:
    """The (width, height) the file of `fmt` has for frames of width x height: MP4 rounds odd sizes up to even."""
    if fmt == "mp4":
        return width + width % 2, height + height % 2
    return width, height


def _check_args(frames: np.ndarray, fmt: str, quality: int, fps: int) -> None:
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"video format {fmt!r}; expected one of {VIDEO_FORMATS}")
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must be F x H x W x 3 uint8, got {getattr(frames, 'shape', type(frames))}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must hold at least one frame of at least 1x1 pixels, got {frames.shape}")
    if not 1 <= quality <= 100 or not 1 <= fps <= 1000:
        raise ValueError(f"quality must be 1 to 100 and fps 1 to 1000, got {quality} and {fps}")


# --- animated WebP ---

# Its own pool: the API's pool for the images of an answer (generate.py) may be what called encode_video.
_FRAME_ENCODERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="webp-frame")


def _encode_webp(frames: np.ndarray, quality: int, fps: int) -> bytes:
    height, width = frames.shape[1:3]
    chunks = [
        # VP8X: only the animation flag (0x02); canvas width and height minus one, 24 bits each.
        _chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + _u24(width - 1) + _u24(height - 1)),
        # ANIM: background colour (unused: every frame covers the canvas) and loop count 0 = forever.
        _chunk(b"ANIM", bytes(4) + struct.pack("<H", 0)),
    ]
    # The stills are independent and Pillow's WebP encoder releases the GIL: encoded at once, one thread a core
    # (the same bytes; perf/results/cpu/encode.md).
    stills = list(_FRAME_ENCODERS.map(partial(_webp_still, quality=quality), frames))
    for index, still in enumerate(stills):
        # Durations are whole ms: each frame ends at round((i + 1) * 1000 / fps), so 16 fps alternates 62 and 63 ms
        # and the clip lasts exactly num_frames / fps seconds instead of drifting.
        duration = round((index + 1) * 1000 / fps) - round(index * 1000 / fps)
        # ANMF: x/2, y/2 = 0; width-1, height-1; duration; flags 0x02 = do not blend, no disposal; then the bitstream.
        header = _u24(0) + _u24(0) + _u24(width - 1) + _u24(height - 1) + _u24(duration) + bytes([0x02])
        chunks.append(_chunk(b"ANMF", header + still))
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_still(pixels: np.ndarray, quality: int) -> bytes:
    """One frame as Pillow's WebP, less the RIFF header: the VP8 (lossy) or VP8L (lossless, at quality
    LOSSLESS_QUALITY) chunk an ANMF frame carries."""
    buffer = io.BytesIO()
    lossless = quality == LOSSLESS_QUALITY
    Image.fromarray(pixels).save(buffer, format="WEBP", quality=quality, method=WEBP_METHOD, lossless=lossless)
    data = buffer.getvalue()
    # An opaque RGB image is a simple-format file: RIFF header, then one "VP8 " / "VP8L" chunk and nothing else.
    if data[12:16] != (b"VP8L" if lossless else b"VP8 "):
        raise RuntimeError(f"Pillow wrote a WebP frame of an unexpected layout ({data[12:16]!r})")
    return data[12:]


def _chunk(tag: bytes, payload: bytes) -> bytes:
    # RIFF chunks are padded to an even size; the size field does not count the pad.
    return tag + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)


def _u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


# --- H.264 MP4 ---


def _crf(quality: int) -> int:
    """quality 1..100 onto CRF 51..11, linearly: 100 -> 11, 95 -> 13, 90 -> 15, 80 -> 19, 70 -> 23 (x264's default),
    50 -> 31, 1 -> 51. Lower CRF is better and larger; each 6 steps roughly halves or doubles the size."""
    return CRF_WORST - round((CRF_WORST - CRF_BEST) * (quality - 1) / 99)


def _encode_mp4(frames: np.ndarray, quality: int, fps: int) -> bytes:
    frames = _pad_even(frames)
    height, width = frames.shape[1:3]
    # +faststart rewrites the file to move the index to the front, reopening it by name: a file, not a BytesIO.
    with tempfile.TemporaryDirectory(prefix="video-") as tmp:
        path = os.path.join(tmp, "clip.mp4")
        with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(
                "libx264", rate=fps, options={"crf": str(_crf(quality)), "preset": X264_PRESET}
            )
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # Tag the stream as BT.709 limited range and convert with that matrix: untagged H.264 is read as BT.709
            # by browsers, while swscale's default is BT.601, a visible colour shift.
            ctx = stream.codec_context
            ctx.colorspace = AVCOL_SPC_BT709
            ctx.color_range = int(ColorRange.MPEG)
            ctx.color_primaries, ctx.color_trc = int(ColorPrimaries.BT709), int(ColorTrc.BT709)
            for index, pixels in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(
                    format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
                )
                frame.pts = index  # in the stream's time base, 1/fps
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the frames x264 holds back for look-ahead
        with open(path, "rb") as file:
            return file.read()


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p stores colour per 2x2 block, so libx264 refuses odd sizes: repeat the last column/row once."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
