"""api.md's request rules for the text-to-image routes: every bad value is a 422 that names its field, before any model
runs. (Edit and inpaint routes: test_api_validation_media.py.)

The real app runs in-process; its real tritonclient points at a closed local port, so a request that passes
validation meets a stopped Triton and answers 503, which tells "valid" from "invalid" without a model.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import request_model
from api.settings import Settings
from registry import ROUTES, Task

from .stack_fixtures import free_port

PATHS = sorted(p for p, r in ROUTES.items() if r.task is Task.TEXT_TO_IMAGE)
GOOD = {"prompt": "a red fox"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(triton_grpc_url=f"127.0.0.1:{free_port()}"))) as c:
        yield c


def assert_invalid(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == "invalid_request", body
    assert body["error"]["field"] == field, body
    assert body["error"]["message"], body


def bad_values(path: str) -> list[tuple[str, object]]:
    lim = ROUTES[path].limits
    return [
        ("prompt", ""),
        ("prompt", "   "),
        ("prompt", "x" * (lim.max_prompt_chars + 1)),
        ("prompt", 42),
        ("prompt", None),
        ("negative_prompt", "x" * (lim.max_prompt_chars + 1)),
        ("negative_prompt", ["no"]),
        ("width", lim.min_size + lim.size_multiple // 2),  # in range, not a multiple
        ("width", lim.min_size - lim.size_multiple),
        ("width", lim.max_size + lim.size_multiple),
        ("width", "1024"),  # a string is not a number: no silent coercion
        ("width", 1024.5),
        ("height", lim.max_size - lim.size_multiple // 2),
        ("height", lim.min_size - lim.size_multiple),
        ("height", lim.max_size + lim.size_multiple),
        ("height", None),
        ("steps", 0),
        ("steps", lim.max_steps + 1),
        ("steps", 2.5),
        ("steps", True),
        ("cfg", lim.min_cfg - 1),
        ("cfg", lim.max_cfg + 1),
        ("cfg", "3.5"),
        ("seed", -1),
        ("seed", 2**32),
        ("seed", "7"),
        ("num_images", 0),
        ("num_images", lim.max_num_images + 1),
        ("output_format", "gif"),
        ("output_format", "PNG"),
        ("output_quality", 0),
        ("output_quality", 101),
        ("sampler", "euler"),  # unknown field
        ("instruction", "make it red"),  # a field of the edit routes
        *(
            [("aspect_ratio", "5:4"), ("aspect_ratio", "16/9"), ("aspect_ratio", 1.0)]
            if ROUTES[path].aspect_ratios
            else [("aspect_ratio", "1:1")]  # a field of the Qwen routes, not of these
        ),
    ]


CASES = [(p, f, v) for p in PATHS for f, v in bad_values(p)]


@pytest.mark.parametrize(("path", "field", "value"), CASES, ids=[f"{p}-{f}={str(v)[:10]}" for p, f, v in CASES])
def test_bad_value_is_422_naming_the_field(client: TestClient, path: str, field: str, value: object) -> None:
    body = {field: value} if field == "prompt" else {**GOOD, field: value}
    assert_invalid(client.post(path, json=body), field)


@pytest.mark.parametrize("path", PATHS)
def test_missing_prompt_is_named(client: TestClient, path: str) -> None:
    assert_invalid(client.post(path, json={"width": 512}), "prompt")


@pytest.mark.parametrize("path", PATHS)
def test_unknown_field_message_names_it(client: TestClient, path: str) -> None:
    r = client.post(path, json={**GOOD, "stpes": 4})
    assert_invalid(r, "stpes")
    assert "stpes" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", PATHS)
def test_several_images_need_a_json_answer(client: TestClient, path: str) -> None:
    assert_invalid(client.post(path, json={**GOOD, "num_images": 2}), "num_images")
    assert_invalid(client.post(path, json={**GOOD, "num_images": 2}, headers={"accept": "image/png"}), "num_images")
    # With JSON accepted the request is valid and goes on to the (stopped) backend.
    r = client.post(path, json={**GOOD, "num_images": 2}, headers={"accept": "application/json"})
    assert r.status_code == 503, r.text


@pytest.mark.parametrize(
    "body",
    [
        {**GOOD, "negative_prompt": ""},  # the product's client sends it everywhere, often empty: means none
        {**GOOD, "seed": None},
        {**GOOD, "seed": 0, "cfg": 0},
        {**GOOD, "seed": 2**32 - 1, "cfg": 20, "steps": 100, "width": 2048, "height": 256},
        {**GOOD, "output_format": "webp", "output_quality": 1, "num_images": 1},
        {"prompt": "x" * 4000, "negative_prompt": "y" * 4000, "output_format": "jpeg", "output_quality": 100},
    ],
)
def test_values_at_the_limits_are_valid(client: TestClient, body: dict) -> None:
    for path in PATHS:
        assert client.post(path, json=body).status_code == 503  # valid; only the backend is missing


def test_malformed_json_and_non_objects_are_422(client: TestClient) -> None:
    r = client.post("/flux", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    for body in ([1, 2], "a fox", None):
        r = client.post("/flux", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text


def test_json_without_content_type_is_parsed(client: TestClient) -> None:
    assert client.post("/flux", content=b'{"prompt": "a fox"}').status_code == 503
    assert_invalid(client.post("/flux", content=b'{"prompt": ""}'), "prompt")


def test_defaults_and_limits_come_from_the_registry() -> None:
    for path, route in ((p, ROUTES[p]) for p in PATHS):
        model = request_model(route)
        defaults = model(prompt="p")
        assert (defaults.steps, defaults.cfg, defaults.width, defaults.height) == (
            route.steps,
            route.cfg,
            route.width,
            route.height,
        ), path
        assert defaults.seed is None and defaults.num_images == 1 and defaults.output_format == "png"
        schema = model.model_json_schema()
        assert schema["properties"]["steps"]["maximum"] == route.limits.max_steps
        assert schema["properties"]["width"]["multipleOf"] == route.limits.size_multiple
        assert schema["additionalProperties"] is False


@pytest.mark.parametrize("path", [p for p in PATHS if ROUTES[p].aspect_ratios])
def test_aspect_ratio_presets_and_their_conflicts(client: TestClient, path: str) -> None:
    route = ROUTES[path]
    model = request_model(route)
    for name, width, height in route.aspect_ratios:
        assert model(prompt="p", aspect_ratio=name).size(route) == (width, height)
        assert client.post(path, json={**GOOD, "aspect_ratio": name}).status_code == 503  # valid
    assert model(prompt="p").size(route) == (route.width, route.height)
    assert model(prompt="p", width=512, height=768).size(route) == (512, 768)
    # An explicit size with a preset is ambiguous: 422 naming aspect_ratio, even when the size equals the preset's.
    for extra in ({"width": 1328}, {"height": 928}, {"width": 1664, "height": 928}):
        assert_invalid(client.post(path, json={**GOOD, "aspect_ratio": "16:9", **extra}), "aspect_ratio")
