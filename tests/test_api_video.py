"""api.video_encoding and api.video_decoding: clips out as animated WebP / MP4, clips in as RGB frames.

Unit level, no server. Encoded files are read back with PyAV and Pillow directly, not with our decoder; the inputs
to our decoder are made here with PyAV and Pillow. Each refusal is turned into the envelope a client would read.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import tempfile

import av
import numpy as np
import pytest
from PIL import Image

from api.errors import ApiError, envelope_bytes
from api.video_decoding import VideoLimits, decode_video, sample_key_frames
from api.video_encoding import VIDEO_FORMATS, encode_video, encoded_size

F, H, W = 9, 48, 64  # not square, so a swapped width and height shows
FIELD = "reference_videos[1]"


def clip(frames: int = F, height: int = H, width: int = W) -> np.ndarray:
    """Smooth moving gradients (lossy codecs keep them well), different in every frame."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [np.stack([(x * 4 + i * 10) % 256, (y * 5) % 256, np.full_like(x, i * 25 % 256)], -1) for i in range(frames)]
    ).astype(np.uint8)


FRAMES = clip()


def av_file(
    fmt: str, codec: str, pix_fmt: str = "yuv420p", rotation: int | None = None, frames: np.ndarray = FRAMES
) -> bytes:
    """frames at 8 fps as a file PyAV writes: fmt is the muxer (mp4, webm, matroska, mov)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"clip.{fmt}")
        with av.open(path, "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=8)
            stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
            if rotation is not None:
                stream.set_display_rotation(rotation)
            for pixels in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            container.mux(stream.encode(None))
        with open(path, "rb") as file:
            return file.read()


def pillow_file(fmt: str, frames: np.ndarray = FRAMES, duration: int = 125) -> bytes:
    images = [Image.fromarray(pixels) for pixels in frames]
    buffer = io.BytesIO()
    save = {"quality": 95} if fmt == "WEBP" else {}
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], duration=duration, loop=0, **save)
    return buffer.getvalue()


def still(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(FRAMES[0]).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes, mime: str | None = None) -> str:
    text = base64.b64encode(data).decode()
    return f"data:{mime};base64,{text}" if mime else text


def decode(data: bytes, mime: str | None = None, **limits) -> np.ndarray:
    return decode_video(b64(data, mime), FIELD, VideoLimits(**limits))


def refused(data: bytes | str, status: int = 422, *in_message: str, mime: str | None = None, **limits) -> str:
    """decode_video's refusal as the client reads it: status, code, the field named, words of the message."""
    value = data if isinstance(data, str) else b64(data, mime)
    with pytest.raises(ApiError) as exc:
        decode_video(value, FIELD, VideoLimits(**limits))
    err = exc.value
    assert err.status == status, err.message
    body = json.loads(envelope_bytes(err.status, err.message, err.field))["error"]
    assert body["code"] == {413: "payload_too_large", 422: "invalid_request"}[status], body
    assert body["field"] == FIELD, body
    for text in in_message:
        assert text in body["message"], body["message"]
    return body["message"]


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- encoding ---


def webp_frames(data: bytes) -> tuple[list[np.ndarray], list[int], Image.Image]:
    image = Image.open(io.BytesIO(data))
    frames, durations = [], []
    for index in range(image.n_frames):
        image.seek(index)
        frames.append(np.array(image.convert("RGB")))
        durations.append(image.info["duration"])  # set once the frame is loaded
    return frames, durations, image


def test_video_formats_are_the_api_choices() -> None:
    assert VIDEO_FORMATS == ("webp", "mp4")


def test_webp_plays_every_frame_at_the_fps_forever() -> None:
    data, mime = encode_video(FRAMES, "webp", 95, 16)
    assert mime == "image/webp"
    frames, durations, image = webp_frames(data)
    assert image.format == "WEBP" and image.size == (W, H) and image.info["loop"] == 0
    assert len(frames) == F
    # 1000/16 = 62.5 ms: whole milliseconds alternate 62 and 63, so the clip lasts F / fps seconds.
    assert all(abs(d - 62.5) <= 0.5 for d in durations), durations
    assert abs(sum(durations) - F * 62.5) <= 0.5
    assert mean_error(np.stack(frames), FRAMES) < 4  # quality 95 looks like the input


def test_webp_keeps_frames_that_do_not_change() -> None:
    # A still shot: libwebp's animation encoder would merge these into one long frame; num_frames must stay true.
    frames = np.repeat(FRAMES[:1], 5, axis=0)
    decoded, durations, _ = webp_frames(encode_video(frames, "webp", 50, 10)[0])
    assert len(decoded) == 5 and durations == [100] * 5


def test_webp_quality_trades_size_for_fidelity() -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    low, high = (encode_video(noisy, "webp", q, 8)[0] for q in (10, 95))
    assert len(low) < len(high)
    assert mean_error(np.stack(webp_frames(high)[0]), noisy) < mean_error(np.stack(webp_frames(low)[0]), noisy)


def test_webp_at_quality_100_is_lossless() -> None:
    noisy = np.random.default_rng(1).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    frames, durations, _ = webp_frames(encode_video(noisy, "webp", 100, 8)[0])
    assert np.array_equal(np.stack(frames), noisy) and durations == [125] * 3


def test_mp4_is_h264_at_the_fps_and_streams_progressively() -> None:
    data, mime = encode_video(FRAMES, "mp4", 95, 16)
    assert mime == "video/mp4"
    # +faststart: the index (moov) comes before the media data, so a browser plays before the download ends.
    assert data[4:8] == b"ftyp" and 0 < data.find(b"moov") < data.find(b"mdat")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (W, H)
        assert stream.average_rate == 16 and stream.frames == F
        assert stream.codec_context.colorspace == 1  # tagged BT.709, as it was converted: no colour shift
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    assert frames.shape == FRAMES.shape
    assert mean_error(frames, FRAMES) < 6


def test_mp4_quality_trades_size_for_fidelity() -> None:
    noisy = np.random.default_rng(0).integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    sizes = [len(encode_video(noisy, "mp4", q, 8)[0]) for q in (10, 50, 95)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2]


def test_odd_sizes_pad_mp4_and_keep_webp() -> None:
    frames = FRAMES[:3, : H - 1, : W - 1]
    with av.open(io.BytesIO(encode_video(frames, "mp4", 95, 8)[0])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == encoded_size("mp4", W - 1, H - 1)
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
    assert encoded_size("mp4", W - 1, H - 1) == (W, H)
    assert mean_error(decoded[:, : H - 1, : W - 1], frames) < 6  # the picture itself is unchanged
    webp = Image.open(io.BytesIO(encode_video(frames, "webp", 95, 8)[0]))
    assert webp.size == encoded_size("webp", W - 1, H - 1) == (W - 1, H - 1)


@pytest.mark.parametrize(
    "frames, fmt, quality, fps",
    [
        (FRAMES, "gif", 90, 8),
        (FRAMES[0], "webp", 90, 8),
        (FRAMES.astype(np.float32), "mp4", 90, 8),
        (FRAMES, "mp4", 0, 8),
    ],
)
def test_encode_refuses_bad_arguments(frames: np.ndarray, fmt: str, quality: int, fps: int) -> None:
    with pytest.raises(ValueError):
        encode_video(frames, fmt, quality, fps)


# --- decoding: what comes in ---


@pytest.mark.parametrize(
    "make, mime, tolerance",
    [
        (lambda: av_file("mp4", "libx264"), "video/mp4", 6),
        (lambda: av_file("mov", "libx264"), "video/quicktime", 6),
        (lambda: av_file("webm", "libvpx-vp9"), "video/webm", 6),
        (lambda: av_file("webm", "libvpx"), "video/webm;codecs=vp8", 6),
        (lambda: av_file("matroska", "libx264"), "video/x-matroska", 6),
        (lambda: av_file("mp4", "libx264", pix_fmt="yuv444p"), None, 6),  # a pixel format other than 4:2:0
        (lambda: pillow_file("WEBP"), "image/webp", 6),
        (lambda: pillow_file("GIF"), "image/gif", 8),  # 256 colours
        (lambda: encode_video(FRAMES, "webp", 95, 8)[0], None, 6),  # our own answers can come back as references
        (lambda: encode_video(FRAMES, "mp4", 95, 8)[0], None, 6),
    ],
    ids=["mp4", "mov", "webm-vp9", "webm-vp8", "mkv", "mp4-yuv444", "webp", "gif", "our-webp", "our-mp4"],
)
def test_decode_round_trip(make, mime: str | None, tolerance: float) -> None:
    frames = decode(make(), mime)
    assert frames.shape == (F, H, W, 3) and frames.dtype == np.uint8
    assert mean_error(frames, FRAMES) < tolerance


def test_decode_accepts_base64_with_line_breaks_and_bytes() -> None:
    text = base64.encodebytes(av_file("mp4", "libx264"))  # MIME-style, wrapped at 76 columns
    assert decode_video(text, FIELD).shape == (F, H, W, 3)


@pytest.mark.parametrize("fmt", ["WEBM", "GIF"])
def test_decode_a_clip_of_no_declared_length_keeps_every_frame_in_order(fmt: str) -> None:
    # Neither WebM nor GIF says how many frames follow: the frames are gathered as they come, past any first guess.
    frames = clip(70)
    data = av_file("webm", "libvpx", frames=frames) if fmt == "WEBM" else pillow_file("GIF", frames)
    decoded = decode(data)
    assert decoded.shape == frames.shape
    per_frame = np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).mean(axis=(1, 2, 3))
    assert per_frame.max() < 8, per_frame  # each frame where it belongs, none lost or repeated


@pytest.mark.parametrize("rotation, quarter_turns", [(-90, -1), (90, 1), (180, 2)])
def test_decode_turns_a_phone_video_upright(rotation: int, quarter_turns: int) -> None:
    # Phones store the sensor's landscape frames and a display matrix; a player turns them, and so do we.
    frames = decode(av_file("mp4", "libx264", rotation=rotation))
    upright = np.rot90(FRAMES, quarter_turns, axes=(1, 2))
    assert frames.shape == upright.shape
    assert mean_error(frames, upright) < 6


# --- decoding: refusals ---


def test_refuses_bytes_over_the_limit_before_decoding() -> None:
    data = av_file("mp4", "libx264")
    refused(data, 413, f"{len(data)} bytes, over the limit of 1000 bytes", max_bytes=1000)


@pytest.mark.parametrize("value", ["not base64!", "QUJD*", "QUJDRA", "data:video/mp4,QUJD", ""])
def test_refuses_bad_base64(value: str) -> None:
    refused(value, 422, FIELD)


@pytest.mark.parametrize(
    "data, what",
    [
        (still("PNG"), "is a PNG image, not a video"),
        (still("JPEG"), "is a JPEG image, not a video"),
        (still("WEBP"), "is a still WebP image, not a video"),
        (pillow_file("WEBP", FRAMES[:1]), "is a still WebP image, not a video"),
        (pillow_file("GIF", FRAMES[:1]), "is a still GIF image, not a video"),
        (b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(64), "is an AVI video, which is not accepted; send MP4, MOV"),
        (b"FLV\x01\x05" + bytes(64), "is an FLV video, which is not accepted"),
        (b"\x00\x01 plain bytes " * 20, "is not a video (MP4, MOV, WebM, MKV, animated WebP or GIF)"),
    ],
    ids=["png", "jpeg", "webp-still", "webp-one-frame", "gif-one-frame", "avi", "flv", "unknown"],
)
def test_refuses_what_is_not_an_accepted_video(data: bytes, what: str) -> None:
    refused(data, 422, what)


def test_refuses_a_codec_outside_the_list() -> None:
    refused(av_file("mov", "mjpeg", pix_fmt="yuvj420p"), 422, "the video is mjpeg; send H.264, HEVC, VP8, VP9 or AV1")


@pytest.mark.parametrize(
    "data, mime, says",
    [
        (av_file("mp4", "libx264"), "video/webm", "the data: prefix says video/webm but the data is an MP4/MOV video"),
        (pillow_file("GIF"), "video/mp4", "the data: prefix says video/mp4 but the data is an animated GIF video"),
        (av_file("webm", "libvpx"), "image/png", "the data: prefix says image/png but the data is a WebM/MKV video"),
    ],
)
def test_refuses_a_data_prefix_that_disagrees(data: bytes, mime: str, says: str) -> None:
    refused(data, 422, says, mime=mime)


def garble(data: bytes, keep: int = 40) -> bytes:
    return data[:keep] + np.random.default_rng(1).integers(0, 256, len(data) - keep, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda: (lambda d: d[: len(d) * 9 // 10])(av_file("mp4", "libx264")),  # the index (moov) at the end is gone
        lambda: (lambda d: d[: len(d) // 2])(encode_video(FRAMES, "mp4", 95, 8)[0]),  # index first, media cut
        lambda: garble(av_file("mp4", "libx264")),
        lambda: (lambda d: d[: len(d) // 2])(av_file("webm", "libvpx")),
        lambda: garble(av_file("webm", "libvpx")),
        lambda: (lambda d: d[: len(d) // 2])(pillow_file("WEBP")),
        lambda: (lambda d: d[: len(d) // 2])(pillow_file("GIF")),
        lambda: av_file("mp4", "libx264")[:12],
    ],
    ids=[
        "mp4-no-index",
        "mp4-faststart-half",
        "mp4-garbled",
        "webm-half",
        "webm-garbled",
        "webp-half",
        "gif-half",
        "ftyp-only",
    ],
)
def test_refuses_truncated_or_corrupt_files(make) -> None:
    refused(make(), 422, "truncated or corrupt")


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda: av_file("mp4", "libx264"), "has 9 frames, over the limit of 5 frames"),  # from the sample table
        (lambda: av_file("webm", "libvpx"), "has more than 5 frames, over the limit of 5 frames"),  # no count: decoding
        (lambda: pillow_file("WEBP"), "has more than 5 frames, over the limit of 5 frames"),  # frame chunks counted
        (lambda: pillow_file("GIF"), "has more than 5 frames, over the limit of 5 frames"),  # frames decoded
    ],
    ids=["mp4", "webm", "webp", "gif"],
)
def test_refuses_too_many_frames(make, says: str) -> None:
    refused(make(), 422, says, max_frames=5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: av_file("mp4", "libx264"),
        lambda: av_file("webm", "libvpx"),
        lambda: pillow_file("WEBP"),
        lambda: pillow_file("GIF"),
    ],
    ids=["mp4", "webm", "webp", "gif"],
)
def test_refuses_too_many_pixels(make) -> None:
    refused(make(), 422, f"is {W}x{H} = {W * H} pixels, over the limit of 1000 pixels", max_pixels=1000)


def test_refuses_too_long_from_the_header() -> None:
    refused(av_file("mp4", "libx264"), 422, "lasts 1.1 s, over the limit of 0.5 s", max_seconds=0.5)  # 9 frames, 8 fps
    refused(pillow_file("WEBP"), 422, "lasts 1.1 s, over the limit of 0.5 s", max_seconds=0.5)


def test_refuses_too_long_while_decoding_when_the_header_lies() -> None:
    data = av_file("webm", "libvpx")
    # The Segment's Duration (EBML id 0x4489, an 8-byte float of milliseconds) claims 0.1 s of a 1.125 s clip.
    at = data.index(b"\x44\x89\x88")
    assert struct.unpack(">d", data[at + 3 : at + 11])[0] == 1125.0
    lying = data[: at + 3] + struct.pack(">d", 100.0) + data[at + 11 :]
    assert decode(lying).shape == (F, H, W, 3)  # within the default limits it is a fine clip
    refused(lying, 422, "lasts more than 0.5 s, over the limit of 0.5 s", max_seconds=0.5)
    refused(pillow_file("GIF"), 422, "lasts more than 0.5 s", max_seconds=0.5)  # GIF has no header duration at all


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        VideoLimits(max_frames=0)


# --- key frames for the r2v route ---


def numbered(count: int) -> np.ndarray:
    """A clip whose frame i is filled with the value i, so a sampled frame tells its index."""
    return np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 3, 3), np.uint8)


@pytest.mark.parametrize(
    "frames, count, picked",
    [(9, 3, [0, 4, 8]), (10, 4, [0, 3, 6, 9]), (81, 5, [0, 20, 40, 60, 80]), (9, 2, [0, 8]), (9, 1, [0])],
)
def test_key_frames_are_evenly_spaced_from_first_to_last(frames: int, count: int, picked: list[int]) -> None:
    sampled = sample_key_frames(numbered(frames), count)
    assert sampled.shape == (count, 2, 3, 3)
    assert sampled[:, 0, 0, 0].tolist() == picked


def test_key_frames_of_a_short_clip_are_all_its_frames() -> None:
    assert sample_key_frames(numbered(3), 5)[:, 0, 0, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        sample_key_frames(numbered(3), 0)
