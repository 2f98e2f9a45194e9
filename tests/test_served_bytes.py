"""The bytes each route answers for one fixed request, compared with those recorded before a change of shape.

Recorded once on a known-good commit (`RYLA_RECORD_SERVED_BYTES=1 pytest tests/test_served_bytes.py` writes
tests/golden/served_bytes.json); afterwards every run asks the same requests through the whole stack (HTTP -> api/ ->
a real Triton -> the components) and must get the same bytes back. The bodies are literal here, not derived from
the registry, so a change in how defaults are derived shows up as a different answer."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

GOLDEN = Path(__file__).parent / "golden" / "served_bytes.json"
RECORD = os.environ.get("RYLA_RECORD_SERVED_BYTES") == "1"


def _png(mode: str, width: int, height: int) -> str:
    y, x = np.mgrid[0:height, 0:width]
    if mode == "L":  # a white square in the middle: the area to repaint
        pixels = ((abs(x - width / 2) < width / 4) & (abs(y - height / 2) < height / 4)).astype(np.uint8) * 255
    else:
        pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


SOURCE, OTHER, MASK = _png("RGB", 96, 64), _png("RGB", 64, 80), _png("L", 96, 64)
BODIES: dict[str, dict[str, object]] = {
    "/flux": {"prompt": "a red fox in the snow", "seed": 7, "steps": 2, "width": 256, "height": 256},
    "/flux-dev": {"prompt": "a red fox in the snow", "seed": 7, "steps": 2, "width": 256, "height": 384},
    "/qwen-image-2512": {"prompt": "a lighthouse at dawn", "seed": 7, "steps": 2, "width": 256, "height": 256},
    "/qwen-image-2512-fast": {"prompt": "a lighthouse at dawn", "seed": 7, "width": 384, "height": 256},
    "/qwen-image-edit-2511": {
        "instruction": "make it night",
        "source_image": SOURCE,
        "reference_images": [OTHER],
        "seed": 7,
        "steps": 2,
        "denoise": 0.6,
    },
    "/qwen-image-inpaint-2511": {
        "prompt": "a red door",
        "source_image": SOURCE,
        "mask_image": MASK,
        "seed": 7,
        "steps": 2,
    },
}


def _recorded() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"routes": {}}


def _answer(client: httpx.Client, route: str) -> dict[str, str]:
    r = client.post(route, json=BODIES[route])
    assert r.status_code == 200, r.text
    return {"sha256": hashlib.sha256(r.content).hexdigest(), "content_type": r.headers["content-type"]}


@pytest.mark.skipif(not RECORD, reason="records only with RYLA_RECORD_SERVED_BYTES=1")
def test_record(client: httpx.Client) -> None:
    routes = {route: _answer(client, route) for route in BODIES}
    # ONNX Runtime picks its kernels by the CPU's instruction set: bytes are compared where it is the same.
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "amx_tile")})
    GOLDEN.write_text(json.dumps({"machine": {"arch": platform.machine(), "isa": flags}, "routes": routes}, indent=1))


@pytest.mark.skipif(RECORD, reason="recording")
@pytest.mark.parametrize("route", sorted(_recorded()["routes"]))
def test_route_answers_the_recorded_bytes(client: httpx.Client, route: str) -> None:
    recorded = _recorded()
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in ("avx2", "avx512f", "amx_tile")})
    if recorded["machine"] != {"arch": platform.machine(), "isa": flags}:
        pytest.skip(f"recorded on {recorded['machine']}: ONNX Runtime's kernels differ on this CPU")
    assert _answer(client, route) == recorded["routes"][route]
