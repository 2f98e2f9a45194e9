"""What the API answers around the image, through the whole stack on the first route (HTTP -> api/ -> a real
Triton -> the components): truthful content types, cost and timing headers, a seed drawn at random and returned.
(Each route's image against plain diffusers: tests/contract/test_routes.py; the same against a stand-in model
and its failures: test_api_triton.py.)"""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import httpx
import pytest
from PIL import Image

from api.samples import sample_body
from registry import ROUTES

PATH = next(iter(ROUTES))
BODY = sample_body(ROUTES[PATH], steps=1, size=ROUTES[PATH].limits.min_size, seed=None)


def test_seed_is_drawn_when_absent_and_reproduces(client: httpx.Client) -> None:
    first = client.post(PATH, json=BODY)
    assert first.status_code == 200
    seed = int(first.headers["x-seed"])
    assert 0 <= seed < 2**32
    again = client.post(PATH, json={**BODY, "seed": seed})
    assert again.content == first.content


@pytest.mark.parametrize(
    ("fmt", "mime", "magic"), [("jpeg", "image/jpeg", b"\xff\xd8"), ("webp", "image/webp", b"RIFF")]
)
def test_output_format_is_truthful(client: httpx.Client, fmt: str, mime: str, magic: bytes) -> None:
    r = client.post(PATH, json={**BODY, "output_format": fmt, "output_quality": 80})
    assert r.status_code == 200
    assert r.headers["content-type"] == mime and r.content.startswith(magic)
    size = ROUTES[PATH].limits.min_size
    assert Image.open(io.BytesIO(r.content)).size == (size, size)


def test_cost_and_timing_headers_arrive(client: httpx.Client) -> None:
    r = client.post(PATH, json=BODY)
    assert r.status_code == 200
    assert r.headers["x-gpu-type"] == "cpu"
    model = r.headers["x-model"]
    assert model == f"local:{ROUTES[PATH].checkpoint}"  # its registry key, never a server path
    assert float(r.headers["x-execution-time-sec"]) > 0
    assert len(r.headers["x-cost-usd"].split(".")[1]) == 6
    assert r.headers["x-request-id"] and r.headers["x-cold-start"] in {"true", "false"}


def test_the_server_log_holds_no_prompt_and_no_warning_per_request(client: httpx.Client, triton) -> None:
    log = Path(triton.log_path)
    start = log.stat().st_size
    marker = f"zebracorn{secrets.token_hex(4)}"
    # Past CLIP's 77 tokens, within T5's: diffusers logs the part CLIP drops, here the marker.
    prompt = " ".join(["a red fox in the snow"] * 20 + [marker])
    r = client.post(PATH, json={**BODY, "prompt": prompt})
    assert r.status_code == 200, r.text
    fast = ROUTES["/qwen-image-2512-fast"]
    body = sample_body(fast, steps=2, size=fast.limits.min_size, seed=1) | {"cfg": 1.0, "negative_prompt": "blurry"}
    assert client.post(fast.path, json=body).status_code == 200
    with log.open("rb") as f:
        f.seek(start)
        written = f.read().decode(errors="replace")
    assert marker not in written
    assert "classifier-free guidance is not enabled" not in written  # once per request at cfg <= 1, before
