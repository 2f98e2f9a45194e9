"""api.md's rules for the routes that take images (edit, inpaint), through the real app in-process: every bad field
or bad media input is a 422 (413 for size) naming the field, before any model runs.

Triton is a closed local port here: a request that passes validation answers 503, so a 422 proves the request
stopped in the API and nothing reached Triton.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from registry import ROUTES

from .requests_valid import IMAGE, valid_body
from .stack_fixtures import free_port
from .test_api_media import encode, png_header

EDIT, INPAINT = "/qwen-image-edit-2511", "/qwen-image-inpaint-2511"
PNG = IMAGE  # 64 x 48, the size of requests_valid's mask
GOOD = {path: valid_body(path) for path in (EDIT, INPAINT)}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(triton_grpc_url=f"127.0.0.1:{free_port()}"))) as c:
        yield c


def assert_error(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == ("invalid_request" if status == 422 else "payload_too_large"), error
    assert error["field"] == field and error["message"], error


@pytest.mark.parametrize("path", [EDIT, INPAINT])
def test_valid_requests_reach_the_backend(client: TestClient, path: str) -> None:
    assert client.post(path, json=GOOD[path]).status_code == 503
    with_prefix = {**GOOD[path], "source_image": "data:image/png;base64," + PNG, "denoise": 1.0, "seed": 1}
    assert client.post(path, json=with_prefix).status_code == 503


def test_edit_takes_up_to_two_reference_images(client: TestClient) -> None:
    assert client.post(EDIT, json={**GOOD[EDIT], "reference_images": [PNG, PNG]}).status_code == 503
    assert_error(client.post(EDIT, json={**GOOD[EDIT], "reference_images": [PNG] * 3}), 422, "reference_images")
    r = client.post(EDIT, json={**GOOD[EDIT], "reference_images": [PNG, "bm90IGFuIGltYWdl"]})  # "not an image"
    assert_error(r, 422, "reference_images[1]")


BAD_MEDIA = [
    ("not base64 at all!", "not valid base64"),
    (PNG[: len(PNG) // 2 + 1], "base64"),  # truncated mid-stream
    (base64.b64encode(b"hello, this is text").decode(), "not an image"),
    (base64.b64encode(encode("GIF")).decode(), "GIF"),
    (base64.b64encode(png_header(100_000, 100_000)).decode(), "pixels"),  # a bomb's header, no pixel data
    (base64.b64encode(encode("PNG", size=(64, 48))[:-40]).decode(), "truncated"),
]


@pytest.mark.parametrize("path", [EDIT, INPAINT])
@pytest.mark.parametrize(("value", "says"), BAD_MEDIA, ids=[s for _, s in BAD_MEDIA])
def test_bad_source_image_is_422_naming_it(client: TestClient, path: str, value: str, says: str) -> None:
    r = client.post(path, json={**GOOD[path], "source_image": value})
    assert_error(r, 422, "source_image")
    assert says in r.json()["error"]["message"]


def test_bad_mask_is_named(client: TestClient) -> None:
    assert_error(client.post(INPAINT, json={**GOOD[INPAINT], "mask_image": "%%%"}), 422, "mask_image")
    other_size = base64.b64encode(encode("PNG", mode="L", size=(48, 64))).decode()
    r = client.post(INPAINT, json={**GOOD[INPAINT], "mask_image": other_size})
    assert_error(r, 422, "mask_image")
    assert "48x64" in r.json()["error"]["message"]
    assert_error(client.post(INPAINT, json={"prompt": "x", "source_image": PNG}), 422, "mask_image")


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        (EDIT, "denoise", 0.0),
        (EDIT, "denoise", 1.5),
        (INPAINT, "denoise", -0.1),
        (EDIT, "instruction", ""),
        (EDIT, "instruction", "   "),
        (EDIT, "prompt", "an edit takes instruction, not prompt"),
        (INPAINT, "instruction", "inpainting takes prompt"),
        (EDIT, "width", 512),  # the output follows the source image
        (EDIT, "reference_images", "not a list"),
        (EDIT, "source_image", ""),
        (INPAINT, "steps", 0),
        (INPAINT, "cfg", 21),
    ],
)
def test_bad_field_is_422_naming_it(client: TestClient, path: str, field: str, value: object) -> None:
    assert_error(client.post(path, json={**GOOD[path], field: value}), 422, field)


def test_missing_required_fields_are_named(client: TestClient) -> None:
    assert_error(client.post(EDIT, json={"source_image": PNG}), 422, "instruction")
    assert_error(client.post(EDIT, json={"instruction": "x"}), 422, "source_image")


def test_denoise_defaults_come_from_the_registry() -> None:
    from api.schemas import request_model

    assert request_model(ROUTES[EDIT])(**GOOD[EDIT]).denoise == ROUTES[EDIT].denoise == 0.8
    assert request_model(ROUTES[INPAINT])(**GOOD[INPAINT]).denoise == ROUTES[INPAINT].denoise == 1.0


def test_media_over_the_byte_limit_is_413() -> None:
    """Over the route's media limit (25 MiB), within a body limit raised for the test: 413 naming the field, decided
    from the base64 length before anything is decoded."""
    limit = ROUTES[EDIT].limits.max_media_bytes
    big = "A" * (4 * ((limit + 3) // 3) + 4)  # base64 of just over `limit` bytes
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", max_body_bytes=len(big) + 1_000_000)
    with TestClient(create_app(settings)) as c:
        assert_error(c.post(EDIT, json={**GOOD[EDIT], "source_image": big}), 413, "source_image")
