"""Videos in: a request's base64 video field (`reference_video`, `reference_videos[1]`) turned into RGB frames.

The video counterpart of api/media.py, in its style: base64 with or without a `data:<mime>;base64,` prefix, every
failure an ApiError naming the field path, 413 payload_too_large for bytes over the limit, 422 for everything else.

The order is cheapest first, so a hostile input costs as little as possible:
  1. the base64 length gives the file size exactly, before anything is decoded (413);
  2. base64 decoding, strict alphabet and padding (422);
  3. magic bytes give the real container: MP4/MOV (ISO BMFF) and WebM/MKV (Matroska) through PyAV, animated WebP and
     GIF through Pillow. A still image (PNG, JPEG, a one-frame WebP or GIF, HEIF/AVIF) is refused as an image, and
     other containers (AVI, FLV, MPEG-TS, Ogg...) are named and refused (422). A `data:` prefix must agree;
  4. header and stream metadata, nothing decoded yet: width x height over max_pixels, frame count over max_frames
     (MP4's sample table, WebP's frame chunks; Matroska and GIF keep none), duration over max_seconds, a codec
     outside H.264, HEVC, VP8, VP9, AV1 and MPEG-4 (each ffmpeg decoder is attack surface; phones and browsers write
     these), a file shorter than its RIFF or Matroska header says (truncated) (422);
  5. decoding, frame by frame, with the limits enforced again as it goes (metadata can lie, or be absent): it stops
     at the first frame over max_frames, over max_pixels or starting after max_seconds. Truncated or corrupt data
     is a 422. Frames come out as H x W x 3 RGB whatever the pixel format, turned upright by the rotation metadata
     phones write (the angle rounded to a quarter turn; a mirroring in the display matrix is ignored); a stream
     that changes size midway is scaled to its first frame's size.

Memory: the frames are written into one uint8 RGB array as they decode, sized from the frame count where the
container gives one and doubled as needed where not: max_frames x max_pixels x 3 bytes at the limits (1.9 GB with the
defaults). A route that needs only a few frames should pass tighter limits.

Decoding is CPU-bound (about 13 ms a frame of 1080p H.264, 4 s for 300 frames): async callers run it off the event
loop, `await run_in_threadpool(decode_video, body.reference_video, "reference_video", limits)`. Nothing here touches
process-wide PyAV or Pillow settings, so concurrent calls in the thread pool are safe.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ApiError
from .media import _b64decode, _check_pixels, _header_size, _split_data_url

# 50 MiB of file per video: a minute of 1080p phone video is 100-130 MB, 30 s of 720p about 20-40 MB. The request body
# limit (Settings.max_body_bytes, 32 MiB of base64 = 24 MiB of file) binds first unless the route raises it.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# 300 frames = 10 s at 30 fps, 20 s at 15: a reference clip is a few seconds; Wan itself makes at most 121 frames.
DEFAULT_MAX_FRAMES = 300
# 1080p in either orientation. 4K phone video is refused rather than held in memory at 25 MB a frame.
DEFAULT_MAX_PIXELS = 1920 * 1080
DEFAULT_MAX_SECONDS = 30.0

# Container (our name) -> the MIME types a data: prefix may give for it. ISO BMFF covers MP4, MOV, M4V and 3GP, and
# Matroska both WebM and MKV: the demuxer is the same, and clients label them loosely (.mov as video/mp4...).
ACCEPTED_MIMES: dict[str, frozenset[str]] = {
    "MP4": frozenset({"video/mp4", "video/quicktime", "video/x-m4v", "video/3gpp", "application/mp4"}),
    "MATROSKA": frozenset({"video/webm", "video/x-matroska", "video/matroska", "application/x-matroska"}),
    "WEBP": frozenset({"image/webp"}),
    "GIF": frozenset({"image/gif"}),
}
ACCEPTED_TEXT = "MP4, MOV, WebM, MKV, animated WebP or GIF"
_NAMES = {"MP4": "MP4/MOV", "MATROSKA": "WebM/MKV", "WEBP": "animated WebP", "GIF": "animated GIF"}
_STILL_NAMES = {"WEBP": "WebP", "GIF": "GIF"}
_DEMUXERS = {"MP4": "mov", "MATROSKA": "matroska"}

# ffmpeg decoder names (codec_context.name) accepted inside MP4/MOV and WebM/MKV.
ACCEPTED_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "mpeg4"})
_CODECS_TEXT = "H.264, HEVC, VP8, VP9 or AV1"

# ISO BMFF major brands of still images (HEIF, AVIF, and their image sequences): pictures, not videos.
_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"})
_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_EBML_DOCTYPE, _MKV_SEGMENT = 0x4282, 0x18538067
# Chunks of an animated WebP besides its frames: VP8X, ANIM, ICCP, EXIF, XMP, a few unknown ones at most.
_WEBP_OTHER_CHUNKS = 64
# What Pillow raises for a malformed or truncated file, from open(), seek() or load().
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


@dataclass(frozen=True)
class VideoLimits:
    """Per video input: max_bytes of the file (after base64), max_frames, max_pixels = width x height of a frame,
    max_seconds of duration."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_frames: int = DEFAULT_MAX_FRAMES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_seconds: float = DEFAULT_MAX_SECONDS

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_frames, self.max_pixels, self.max_seconds) <= 0:
            raise ValueError(f"VideoLimits must be positive, got {self}")


DEFAULT_LIMITS = VideoLimits()


def decode_video(value: str | bytes, field: str, limits: VideoLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A base64 video (optionally a data: URL) as F x H x W x 3 uint8 RGB frames, F >= 1.

    Raises ApiError 413 (file over limits.max_bytes) or 422 (not base64, not an accepted video, prefix disagrees with
    the data, over a limit, truncated or corrupt), naming `field`. CPU-bound: run it in a thread.
    """
    payload, declared_mime = _split_data_url(value, field)
    data = _b64decode(payload, field, limits.max_bytes)
    kind = _sniff_container(data, field)
    if declared_mime and declared_mime not in ACCEPTED_MIMES[kind]:
        raise ApiError(422, f"{field}: the data: prefix says {declared_mime} but the data is {_article(kind)}", field)
    decode = _decode_pillow if kind in ("WEBP", "GIF") else _decode_av
    return decode(data, kind, field, limits)


def sample_key_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """`count` frames evenly spaced over the clip, the first and the last included (count 1: the first frame alone);
    a clip of at most `count` frames is returned whole. The r2v route conditions on these as reference images."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if len(frames) <= count:
        return frames
    # Nearest frame to each of `count` evenly spaced instants, 0 and len - 1 exactly.
    indices = np.rint(np.linspace(0, len(frames) - 1, count)).astype(np.intp)
    return frames[indices]


# --- the container, from its magic bytes ---


def _sniff_container(data: bytes, field: str) -> str:
    """One of ACCEPTED_MIMES, else a 422 naming what the data is, if we know."""
    if data[4:8] == b"ftyp":
        if data[8:12] in _IMAGE_BRANDS:
            raise _not_a_video(field, "a HEIF/AVIF image")
        return "MP4"
    if data[:4] == _EBML_MAGIC:
        return "MATROSKA"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        # Animated WebP is the extended format (VP8X first) with its animation flag set; anything else is a still.
        if data[12:16] != b"VP8X" or len(data) < 21 or not data[20] & 0x02:
            raise _not_a_video(field, "a still WebP image")
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    image = _refused_image(data)
    if image:
        raise _not_a_video(field, image)
    container = _refused_container(data)
    if container:
        raise ApiError(422, f"{field} is {container}, which is not accepted; send {ACCEPTED_TEXT}", field)
    raise ApiError(422, f"{field} is not a video ({ACCEPTED_TEXT})", field)


def _refused_image(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "a PNG image"
    if data.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if data[:2] == b"BM":
        return "a BMP image"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF image"
    return None


def _refused_container(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "an AVI video"
    if data[:3] == b"FLV":
        return "an FLV video"
    if data[:4] == b"OggS":
        return "an Ogg file"
    if data[:4] == b"\x30\x26\xb2\x75":
        return "a WMV/ASF video"
    if data[:4] == b"\x00\x00\x01\xba":
        return "an MPEG program stream"
    if len(data) > 188 and data[0] == data[188] == 0x47:  # a sync byte every 188-byte packet
        return "an MPEG transport stream"
    return None


def _not_a_video(field: str, what: str) -> ApiError:
    return ApiError(422, f"{field} is {what}, not a video; send {ACCEPTED_TEXT}", field)


def _article(kind: str) -> str:
    return f"{'a' if kind == 'MATROSKA' else 'an'} {_NAMES[kind]} video"  # "an MP4", "an animated", "a WebM"


# --- MP4/MOV and WebM/MKV, through PyAV ---


def _decode_av(data: bytes, kind: str, field: str, limits: VideoLimits) -> np.ndarray:
    if kind == "MATROSKA":
        _check_matroska_header(data, field)
    try:
        # format=: only the sniffed demuxer parses these bytes, no probing across formats; a tag in a broken
        # encoding is replaced, not a UnicodeDecodeError.
        with av.open(io.BytesIO(data), format=_DEMUXERS[kind], metadata_errors="replace") as container:
            stream = _video_stream(container, kind, field)
            _check_stream_metadata(container, stream, field, limits)
            # The decoder's own cap, a backstop should a frame be larger than the stream header said.
            stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
            frames = _decode_av_frames(container, stream, kind, field, limits)
    except av.FFmpegError as exc:
        raise _corrupt(field, kind, getattr(exc, "strerror", None) or str(exc)) from None
    if len(frames) == 0:
        raise _corrupt(field, kind, "no frame decodes")
    return frames.array()


def _video_stream(container: av.container.InputContainer, kind: str, field: str) -> av.VideoStream:
    if not container.streams.video:
        raise ApiError(422, f"{field}: the {_NAMES[kind]} file has no video stream", field)
    stream = container.streams.video[0]
    # No codec_context: ffmpeg has no decoder for it at all.
    codec = stream.codec_context.name if stream.codec_context is not None else "an unknown codec"
    if codec not in ACCEPTED_CODECS:
        raise ApiError(422, f"{field}: the video is {codec}; send {_CODECS_TEXT}", field)
    return stream


def _check_stream_metadata(
    container: av.container.InputContainer, stream: av.VideoStream, field: str, limits: VideoLimits
) -> None:
    ctx = stream.codec_context
    if ctx.width and ctx.height:  # 0 where the header does not say; the frames are checked as they decode
        _check_pixels((ctx.width, ctx.height), field, limits.max_pixels)
    if stream.frames > limits.max_frames:  # 0 where the container keeps no count (Matroska)
        raise _too_many_frames(field, limits.max_frames, f"has {stream.frames} frames")
    seconds = _declared_seconds(container, stream)
    if seconds is not None and seconds > limits.max_seconds:
        raise _too_long(field, limits.max_seconds, f"lasts {seconds:.1f} s")


def _declared_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:  # in AV_TIME_BASE units (microseconds), over all streams
        return container.duration / av.time_base
    return None


def _decode_av_frames(
    container: av.container.InputContainer, stream: av.VideoStream, kind: str, field: str, limits: VideoLimits
) -> _FrameBuffer:
    frames = _FrameBuffer(stream.frames, limits.max_frames)
    start: float | None = None
    size: tuple[int, int] | None = None  # the first frame's, which the others are scaled to
    rotation = 0
    # A frame takes one packet, two for field pairs: packets that never make frames cost time, not frames.
    max_packets = 2 * limits.max_frames + 16
    for packets, packet in enumerate(container.demux(stream), start=1):
        if packets > max_packets:
            raise ApiError(
                422, f"{field} holds over {max_packets} packets for at most {limits.max_frames} frames", field
            )
        if packet.is_corrupt:  # the demuxer read less than the index promised: the file was cut short
            raise _corrupt(field, kind, f"packet {len(frames) + 1} is incomplete")
        for frame in packet.decode():
            if len(frames) == limits.max_frames:
                raise _too_many_frames(field, limits.max_frames, f"has more than {limits.max_frames} frames")
            _check_pixels((frame.width, frame.height), field, limits.max_pixels)
            if frame.time is not None:
                start = frame.time if start is None else start
                if frame.time - start > limits.max_seconds:
                    raise _too_long(field, limits.max_seconds, f"lasts more than {limits.max_seconds:g} s")
            if size is None:
                size, rotation = (frame.width, frame.height), frame.rotation
            frames.append(_av_rgb(frame, size, rotation))
    return frames


def _av_rgb(frame: av.VideoFrame, size: tuple[int, int], rotation: int) -> np.ndarray:
    """H x W x 3 RGB, upright. swscale converts from any pixel format, reading the frame's own colour tags."""
    width, height = size
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    # rotation: degrees counterclockwise that a player turns the frame (the display matrix), as np.rot90 turns it.
    quarter_turns = round(rotation / 90) % 4
    return np.rot90(rgb, quarter_turns) if quarter_turns else rgb


def _check_matroska_header(data: bytes, field: str) -> None:
    """The EBML header must name a WebM or Matroska document, and a Segment of known size must be all there: the
    demuxer reads a cut-off file to its end without complaint. (A live recording, MediaRecorder's, has no size.)"""
    try:
        _, header_size, pos = _ebml_element(data, 0)
        if header_size is None:
            raise IndexError("an EBML header of unknown size")
        doc_type = _ebml_doc_type(data, pos, pos + header_size)
        segment_id, segment_size, segment_pos = _ebml_element(data, pos + header_size)
    except IndexError:
        raise _corrupt(field, "MATROSKA", "its header is cut off") from None
    if doc_type not in ("webm", "matroska"):
        raise ApiError(422, f"{field} is a Matroska file of type {doc_type!r}; send {ACCEPTED_TEXT}", field)
    if segment_id != _MKV_SEGMENT:
        raise _corrupt(field, "MATROSKA", "no segment follows the header")
    if segment_size is not None and segment_pos + segment_size > len(data):
        raise _corrupt(field, "MATROSKA", f"it ends at byte {len(data)} of {segment_pos + segment_size}")


def _ebml_doc_type(data: bytes, pos: int, end: int) -> str:
    while pos < end:
        element_id, size, pos = _ebml_element(data, pos)
        if element_id == _EBML_DOCTYPE:
            return data[pos : pos + (size or 0)].rstrip(b"\0").decode("ascii", "replace")
        pos += size or 0
    return ""


def _ebml_element(data: bytes, pos: int) -> tuple[int, int | None, int]:
    """(id with its length marker, payload size or None for "unknown", payload offset) of the element at pos."""
    element_id, id_length = _ebml_vint(data, pos, keep_marker=True)
    size, size_length = _ebml_vint(data, pos + id_length, keep_marker=False)
    unknown = size == (1 << (7 * size_length)) - 1  # all value bits set
    return element_id, None if unknown else size, pos + id_length + size_length


def _ebml_vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """EBML's variable-length integer: the count of leading zero bits of the first byte gives its length."""
    first = data[pos]
    length = 9 - first.bit_length()  # IndexError past the end, like data[pos]
    if length > 8:
        raise IndexError("no EBML length marker")
    if pos + length > len(data):
        raise IndexError("EBML integer cut off")
    value = first if keep_marker else first & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = value << 8 | byte
    return value, length


# --- animated WebP and GIF, through Pillow ---


def _decode_pillow(data: bytes, kind: str, field: str, limits: VideoLimits) -> np.ndarray:
    # Header first: Pillow's WebP plugin allocates the canvas inside open().
    size = _header_size(data, "WEBP") if kind == "WEBP" else _gif_screen_size(data)
    if size is not None:
        _check_pixels(size, field, limits.max_pixels)
    declared_frames = _check_webp_frames(data, field, limits) if kind == "WEBP" else 0
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            _check_pixels(image.size, field, limits.max_pixels)
            frames = _pillow_frames(image, _FrameBuffer(declared_frames, limits.max_frames), field, limits)
    except Image.DecompressionBombError:
        raise ApiError(422, f"{field} is over the limit of {limits.max_pixels} pixels per frame", field) from None
    except _PILLOW_ERRORS as exc:
        detail = "its header is unreadable" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise _corrupt(field, kind, detail) from None
    if len(frames) < 2:
        raise _not_a_video(field, f"a still {_STILL_NAMES[kind]} image")
    return frames.array()


def _pillow_frames(image: Image.Image, frames: _FrameBuffer, field: str, limits: VideoLimits) -> _FrameBuffer:
    """Every frame, seeking until the file ends. Not n_frames first: for a GIF that walks every frame's blocks in
    Python, and a hostile file holds millions of tiny ones; this stops at max_frames + 1 (WebP's count came first)."""
    size, elapsed_ms = image.size, 0
    while True:
        try:
            image.seek(len(frames))
        except EOFError:
            return frames
        if len(frames) == limits.max_frames:
            raise _too_many_frames(field, limits.max_frames, f"has more than {limits.max_frames} frames")
        # Pillow grows a GIF's canvas for a frame reaching past it: check before the frame is loaded into it.
        _check_pixels(image.size, field, limits.max_pixels)
        # convert loads the frame, composited onto the canvas by Pillow (GIF disposal, WebP blending); alpha dropped.
        rgb = image.convert("RGB")
        if rgb.size != size:  # browsers clip such a frame to the logical screen, and so do we
            rgb = rgb.crop((0, 0, *size))
        frames.append(np.asarray(rgb))
        elapsed_ms += image.info.get("duration") or 0
        if elapsed_ms > limits.max_seconds * 1000:  # GIF keeps no total; WebP's was checked, this is the backstop
            raise _too_long(field, limits.max_seconds, f"lasts more than {limits.max_seconds:g} s")


def _gif_screen_size(data: bytes) -> tuple[int, int] | None:
    # The logical screen descriptor after the 6-byte signature: width, height as little-endian uint16.
    return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None


def _check_webp_frames(data: bytes, field: str, limits: VideoLimits) -> int:
    """Frame count (returned) and total duration from the ANMF chunk headers, before libwebp decodes anything; a
    chunk or RIFF size past the end of the data is a truncated file."""
    riff_end = 8 + struct.unpack("<I", data[4:8])[0]
    if riff_end > len(data):
        raise _corrupt(field, "WEBP", f"it ends at byte {len(data)} of {riff_end}")
    count, total_ms, pos, chunks = 0, 0, 12, 0
    while pos + 8 <= riff_end:
        chunks += 1
        if chunks > limits.max_frames + _WEBP_OTHER_CHUNKS:  # bounds this Python loop against millions of tiny chunks
            raise _corrupt(field, "WEBP", f"it holds over {chunks - 1} chunks")
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > riff_end:
            raise _corrupt(field, "WEBP", f"its {tag.decode('latin-1')!r} chunk runs past the end of the file")
        if tag == b"ANMF" and size >= 16:
            count += 1
            total_ms += int.from_bytes(data[pos + 20 : pos + 23], "little")  # the frame's 24-bit duration, ms
        pos += 8 + size + size % 2
        if count > limits.max_frames:
            raise _too_many_frames(field, limits.max_frames, f"has more than {limits.max_frames} frames")
    if total_ms > limits.max_seconds * 1000:
        raise _too_long(field, limits.max_seconds, f"lasts {total_ms / 1000:.1f} s")
    return count


# --- the decoded frames ---


class _FrameBuffer:
    """Frames written into one F x H x W x 3 array as they decode: a list of frames stacked at the end held every
    frame twice. Sized from the container's frame count where it has one, else doubled as it fills, never past
    max_frames; the unwritten tail of an array that was too large is never touched, so it costs no memory."""

    def __init__(self, declared_frames: int, max_frames: int) -> None:
        self._capacity = min(declared_frames, max_frames) if declared_frames > 0 else min(32, max_frames)
        self._max_frames = max_frames
        self._array: np.ndarray | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, rgb: np.ndarray) -> None:
        if self._array is None:
            self._array = np.empty((self._capacity, *rgb.shape), np.uint8)
        elif self._count == len(self._array):
            grown = np.empty((min(2 * self._count, self._max_frames), *self._array.shape[1:]), np.uint8)
            grown[: self._count] = self._array
            self._array = grown
        self._array[self._count] = rgb
        self._count += 1

    def array(self) -> np.ndarray:
        assert self._array is not None, "callers refuse a clip without frames first"
        return self._array[: self._count]


# --- errors ---


def _too_many_frames(field: str, max_frames: int, has: str) -> ApiError:
    return ApiError(422, f"{field} {has}, over the limit of {max_frames} frames", field)


def _too_long(field: str, max_seconds: float, lasts: str) -> ApiError:
    return ApiError(422, f"{field} {lasts}, over the limit of {max_seconds:g} s", field)


def _corrupt(field: str, kind: str, detail: str) -> ApiError:
    return ApiError(422, f"{field}: the {_NAMES[kind]} video is truncated or corrupt ({detail})", field)
