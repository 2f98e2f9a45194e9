"""What the API answers around the image, through the whole stack on the first route (HTTP -> api/ -> a real
Triton -> the components): truthful content types, cost and timing headers, a seed drawn at random and returned.
(Each route's image against plain diffusers: tests/contract/test_routes.py; the same against a stand-in model
and its failures: test_api_triton.py.)"""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from api.samples import sample_body
from registry import CHECKPOINTS, ROUTES

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
    assert model.startswith("local:") and model.endswith(CHECKPOINTS[ROUTES[PATH].checkpoint].tiny)
    assert float(r.headers["x-execution-time-sec"]) > 0
    assert len(r.headers["x-cost-usd"].split(".")[1]) == 6
    assert r.headers["x-request-id"] and r.headers["x-cold-start"] in {"true", "false"}
