"""FLUX through the whole stack (HTTP -> api/ -> a real Triton -> ONNX components), where FLUX differs from the other
families: schnell runs true CFG against the negative prompt above cfg 1 (api.md), dev's cfg is its distilled
guidance, and a request's several images are the pipeline's own batch. (Served == diffusers at each route's
defaults: tests/contract/test_routes.py.)"""

from __future__ import annotations

import base64

import httpx

from families.flux.reference import images
from tests.images import MAX_PIXEL_DIFF, decode, max_diff

PROMPT = "a watercolor fox in a snowy forest"
SIZE = {"width": 256, "height": 256}


def test_schnell_above_cfg_one_runs_true_cfg(client: httpx.Client, stack_dirs) -> None:
    body = {"prompt": PROMPT, "negative_prompt": "blurry", "cfg": 3.0, "seed": 9, "steps": 2, **SIZE}
    r = client.post("/flux", json=body)
    assert r.status_code == 200, r.text
    (expected,) = images("/flux", body, stack_dirs.checkpoints)
    assert max_diff(decode(r.content), expected) <= MAX_PIXEL_DIFF
    plain = client.post("/flux", json={**body, "cfg": 1.0})  # no guidance at cfg <= 1: another image
    assert max_diff(decode(plain.content), decode(r.content)) > 10


def test_dev_cfg_is_its_guidance_scale(client: httpx.Client, stack_dirs) -> None:
    body = {"prompt": PROMPT, "cfg": 6.0, "seed": 4, "steps": 2, **SIZE}
    r = client.post("/flux-dev", json=body)
    assert r.status_code == 200, r.text
    (expected,) = images("/flux-dev", body, stack_dirs.checkpoints)
    assert max_diff(decode(r.content), expected) <= MAX_PIXEL_DIFF


def test_num_images_returns_the_pipelines_batch(client: httpx.Client, stack_dirs) -> None:
    body = {"prompt": PROMPT, "seed": 5, "num_images": 2, "steps": 2, **SIZE}
    r = client.post("/flux", json=body, headers={"accept": "application/json"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["route"] == "/flux" and answer["seed"] == 5 and len(answer["images"]) == 2
    for item, ref in zip(answer["images"], images("/flux", body, stack_dirs.checkpoints), strict=True):
        assert item["mime_type"] == "image/png" and (item["width"], item["height"]) == (256, 256)
        assert max_diff(decode(base64.b64decode(item["data"])), ref) <= MAX_PIXEL_DIFF
