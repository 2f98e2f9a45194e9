"""/flux and /flux-dev through the whole stack: HTTP → api/ → a real Triton → ONNX components, compared with the
plain diffusers FluxPipeline on the same tiny checkpoint, prompt and seed."""

from __future__ import annotations

import base64
import io
from functools import cache

import httpx
import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from PIL import Image

from checkpoints.source import resolve
from registry import ROUTES
from stack.local import REPO_ROOT

PROMPT = "a watercolor fox in a snowy forest"
SIZE = {"width": 256, "height": 256}
# ONNX Runtime vs torch float noise only: at most 2 of 255 levels on any pixel.
MAX_PIXEL_DIFF = 2


@cache
def reference_pipeline(checkpoint: str) -> FluxPipeline:
    path = resolve(checkpoint, "tiny", REPO_ROOT / ".cache" / "test-stack" / "checkpoints").path
    pipe = FluxPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(route: str, seed: int, n: int = 1, **kwargs: object) -> list[np.ndarray]:
    """What a diffusers user gets for the route's model with its defaults (api.md: steps / cfg per route)."""
    r = ROUTES[route]
    pipe = reference_pipeline(r.checkpoint)
    defaults: dict[str, object] = {"num_inference_steps": r.steps}
    if route == "/flux-dev":
        defaults.update(guidance_scale=r.cfg, max_sequence_length=512)
    else:
        defaults.update(guidance_scale=0.0, max_sequence_length=256)
    defaults.update(kwargs)
    out = pipe(
        PROMPT,
        height=SIZE["height"],
        width=SIZE["width"],
        num_images_per_prompt=n,
        generator=torch.Generator("cpu").manual_seed(seed),
        **defaults,
    )
    return [np.asarray(im.convert("RGB")) for im in out.images]


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.mark.parametrize("route", ["/flux", "/flux-dev"])
def test_served_image_equals_diffusers_pipeline(client: httpx.Client, route: str) -> None:
    r = client.post(route, json={"prompt": PROMPT, "seed": 1234, **SIZE})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-seed"] == "1234"
    served = decode(r.content)
    assert served.shape == (256, 256, 3)
    assert max_diff(served, reference_images(route, 1234)[0]) <= MAX_PIXEL_DIFF
    # A blank or constant image would pass a loose diff against a broken reference; the model draws structure.
    assert served.std() > 1.0


@pytest.mark.parametrize("route", ["/flux", "/flux-dev"])
def test_same_seed_same_bytes(client: httpx.Client, route: str) -> None:
    body = {"prompt": PROMPT, "seed": 77, **SIZE, "steps": 2}
    first, second = client.post(route, json=body), client.post(route, json=body)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    other = client.post(route, json={**body, "seed": 78})
    assert other.content != first.content


def test_num_images_returns_the_pipelines_batch(client: httpx.Client) -> None:
    r = client.post(
        "/flux", json={"prompt": PROMPT, "seed": 5, "num_images": 2, **SIZE}, headers={"accept": "application/json"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["route"] == "/flux" and body["seed"] == 5 and len(body["images"]) == 2
    expected = reference_images("/flux", 5, n=2)
    for item, ref in zip(body["images"], expected, strict=True):
        assert item["mime_type"] == "image/png" and (item["width"], item["height"]) == (256, 256)
        assert max_diff(decode(base64.b64decode(item["data"])), ref) <= MAX_PIXEL_DIFF
    assert set(body["timings"]) >= {"queue_s", "inference_s", "total_s"}
    assert body["gpu_type"] == "cpu" and body["model"].startswith("local:")


def test_schnell_above_cfg_one_runs_true_cfg(client: httpx.Client) -> None:
    body = {"prompt": PROMPT, "negative_prompt": "blurry", "cfg": 3.0, "seed": 9, "steps": 2, **SIZE}
    r = client.post("/flux", json=body)
    assert r.status_code == 200, r.text
    ref = reference_images("/flux", 9, num_inference_steps=2, true_cfg_scale=3.0, negative_prompt="blurry")[0]
    assert max_diff(decode(r.content), ref) <= MAX_PIXEL_DIFF


def test_seed_is_drawn_when_absent_and_reproduces(client: httpx.Client) -> None:
    body = {"prompt": PROMPT, "steps": 1, **SIZE}
    first = client.post("/flux", json=body)
    assert first.status_code == 200
    seed = int(first.headers["x-seed"])
    assert 0 <= seed < 2**32
    again = client.post("/flux", json={**body, "seed": seed})
    assert again.content == first.content


@pytest.mark.parametrize(
    ("fmt", "mime", "magic"), [("jpeg", "image/jpeg", b"\xff\xd8"), ("webp", "image/webp", b"RIFF")]
)
def test_output_format_is_truthful(client: httpx.Client, fmt: str, mime: str, magic: bytes) -> None:
    r = client.post("/flux", json={"prompt": PROMPT, "steps": 1, "output_format": fmt, "output_quality": 80, **SIZE})
    assert r.status_code == 200
    assert r.headers["content-type"] == mime and r.content.startswith(magic)
    assert Image.open(io.BytesIO(r.content)).size == (256, 256)


def test_cost_and_timing_headers_arrive(client: httpx.Client) -> None:
    r = client.post("/flux-dev", json={"prompt": PROMPT, "steps": 2, **SIZE})
    assert r.status_code == 200
    assert r.headers["x-gpu-type"] == "cpu"
    assert r.headers["x-model"].startswith("local:") and r.headers["x-model"].endswith("flux-dev")
    assert float(r.headers["x-execution-time-sec"]) > 0
    assert len(r.headers["x-cost-usd"].split(".")[1]) == 6
    assert r.headers["x-request-id"] and r.headers["x-cold-start"] in {"true", "false"}


def test_prompt_over_the_token_limit_is_named(client: httpx.Client) -> None:
    # Under 4,000 characters but far over T5's 256 tokens for schnell: the model's own limit, reported as a 422.
    prompt = " ".join(f"w{i}" for i in range(600))
    assert len(prompt) <= 4000
    r = client.post("/flux", json={"prompt": prompt, "steps": 1, **SIZE})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "prompt"


def test_ready_and_models_name_the_served_checkpoints(client: httpx.Client) -> None:
    assert client.get("/ready").status_code == 200
    models = client.get("/v1/models").json()
    rows = models["data"] if isinstance(models, dict) and "data" in models else models
    by_route = {row["route"] if "route" in row else row["path"]: row for row in rows}
    for route in ("/flux", "/flux-dev"):
        assert by_route[route]["loaded"] is True
        assert by_route[route]["model"].startswith("local:")
