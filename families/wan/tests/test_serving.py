"""Wan through the whole stack (HTTP -> api/ -> a real Triton -> ONNX components), where video differs from the
image routes: the clip's frame count (num_frames or its other name length, 4k+1), fps, the answer formats (animated
WebP, H.264 MP4) and the JSON video block; the two-expert checkpoint switches experts within a run. (Served ==
diffusers frame by frame on both layouts: tests/contract/test_routes.py, whose /wan2.6 runs Wan2.2-A14B's two
experts and /wan2.6-lora Wan2.1's one transformer, /wan2.6-r2v VACE on the sample clip's three key frames.) And
r2v's reference videos: several of them, of two containers, and the ones a request may not send."""

from __future__ import annotations

import base64
import io

import av
import httpx
import numpy as np
import pytest

from api.video_encoding import encode_video
from families.wan.reference import pipeline, r2v, video
from tests.images import MAX_PIXEL_DIFF, decode, max_diff

BODY = {"prompt": "a paper boat on a river", "seed": 5, "steps": 2, "width": 272, "height": 256}


def test_a_clip_has_the_frames_asked_for_under_either_name(client: httpx.Client, stack_dirs) -> None:
    body = {**BODY, "num_frames": 9, "output_quality": 100}
    r = client.post("/wan2.6", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp" and r.headers["x-frames"] == "9"
    served = decode(r.content)
    assert served.shape == (9, 256, 272, 3)
    (expected,) = video("/wan2.6", body, stack_dirs.checkpoints)
    assert max_diff(served, expected) <= MAX_PIXEL_DIFF
    again = client.post("/wan2.6", json={**BODY, "length": 9, "output_quality": 100})  # the playground's name
    assert again.status_code == 200 and again.content == r.content


def test_mp4_and_the_json_video_block(client: httpx.Client) -> None:
    body = {**BODY, "num_frames": 5, "fps": 8, "output_format": "mp4"}
    r = client.post("/wan2.6", json=body, headers={"accept": "application/json"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert "images" not in answer or answer["images"] is None
    block = answer["video"]
    assert (block["mime_type"], block["width"], block["height"], block["num_frames"], block["fps"]) == (
        "video/mp4",
        272,
        256,
        5,
        8,
    )
    with av.open(io.BytesIO(base64.b64decode(block["data"]))) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264" and stream.average_rate == 8
    assert len(frames) == 5 and frames[0].shape == (256, 272, 3)
    assert np.std(frames) > 1.0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"num_frames": 8}, "num_frames"),  # not 4k+1
        ({"num_frames": 125}, "num_frames"),  # over 121
        ({"length": 6}, "length"),
        ({"num_frames": 9, "length": 9}, "length"),  # both names
        ({"fps": 31}, "fps"),
        ({"output_format": "png"}, "output_format"),  # an image format on a video route
        ({"num_images": 2}, "num_images"),  # not a video field
    ],
)
def test_bad_video_fields_are_422_naming_them(client: httpx.Client, extra: dict, field: str) -> None:
    r = client.post("/wan2.6", json={**BODY, **extra})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_the_two_experts_share_a_run(stack_dirs) -> None:
    """At the contract tests' 2 steps the A14B schedule crosses the boundary: the high-noise expert takes the first
    step and the low-noise one the second, so served == diffusers there covers the switch."""
    pipe = pipeline("wan2.2-t2v-a14b", stack_dirs.checkpoints)
    pipe.scheduler.set_timesteps(2)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    timesteps = pipe.scheduler.timesteps.tolist()
    assert timesteps[0] >= boundary > timesteps[-1], (timesteps, boundary)


def _clip(greys: tuple[int, ...], size: tuple[int, int] = (96, 64), fmt: str = "webp") -> str:
    """A clip of flat frames, a checker of each grey on its inverse, so each key frame and each clip differs."""
    h, w = size
    checker = (np.indices((h, w)).sum(axis=0) // 8 % 2).astype(bool)[..., None]
    frames = np.stack([np.where(checker, g, 255 - g).repeat(3, axis=-1).astype(np.uint8) for g in greys])
    data, _ = encode_video(frames, fmt, 100, 8)
    return base64.b64encode(data).decode()


R2V = {"prompt": "the character waves", "seed": 9, "steps": 2, "width": 256, "height": 256, "num_frames": 9}


def test_r2v_takes_several_reference_videos_and_the_reference_matters(client: httpx.Client, stack_dirs) -> None:
    """Two reference videos (an animated WebP and an H.264 MP4): a key frame of each conditions VACE, as diffusers
    does it with those frames; another reference gives another clip."""
    body = {**R2V, "output_quality": 100, "reference_videos": [_clip((40, 90, 140)), _clip((200, 10), fmt="mp4")]}
    r = client.post("/wan2.6-r2v", json=body)
    assert r.status_code == 200, r.text
    served = decode(r.content)
    assert served.shape == (9, 256, 256, 3)
    (expected,) = r2v("/wan2.6-r2v", body, stack_dirs.checkpoints)
    assert max_diff(served, expected) <= MAX_PIXEL_DIFF
    other = client.post("/wan2.6-r2v", json={**body, "reference_videos": [_clip((250, 0)), _clip((128, 64))]})
    # Random tiny VACE blocks move the clip little, but the reference reaches the model.
    assert other.status_code == 200 and max_diff(decode(other.content), served) > 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"reference_videos": [_clip((1, 2))] * 4}, "reference_videos"),  # over three
        ({"reference_videos": []}, "reference_videos"),  # none at all (was a 500, found by the fuzz test)
        ({"reference_video": _clip((1, 2)), "reference_videos": [_clip((1, 2))]}, "reference_videos"),  # both
        ({}, "reference_video"),  # neither
        ({"num_frames": 5, "reference_videos": [_clip((1, 2))] * 3}, "reference_videos"),  # 2 latent frames, 3 refs
    ],
)
def test_bad_reference_videos_are_named(client: httpx.Client, extra: dict, field: str) -> None:
    r = client.post("/wan2.6-r2v", json={**R2V, **extra})
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
