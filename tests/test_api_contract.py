"""The REST contract of /flux and /flux-dev that holds before any model runs: validation, auth, limits, errors.

The real app runs in-process; its real tritonclient points at a closed local port, so "Triton down" is real too.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from registry import ROUTES

from .stack_fixtures import free_port

GOOD = {"prompt": "a red fox"}
KEY = "test-key-1"


@pytest.fixture(scope="module")
def app_client() -> Iterator[TestClient]:
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", api_keys=f"{KEY},other-key", max_body_bytes=64_000)
    with TestClient(create_app(settings), headers={"authorization": f"Bearer {KEY}"}) as client:
        yield client


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}, body
    return body["error"]


def assert_field(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["code"] == "invalid_request" and err["field"] == field, err


LIMITS = ROUTES["/flux"].limits
BAD_VALUES = [
    ("prompt", ""),
    ("prompt", "   "),
    ("prompt", "x" * (LIMITS.max_prompt_chars + 1)),
    ("prompt", 42),
    ("negative_prompt", "x" * (LIMITS.max_prompt_chars + 1)),
    ("width", 1000),  # not a multiple of 16
    ("width", LIMITS.min_size - 16),
    ("width", LIMITS.max_size + 16),
    ("height", 250),
    ("height", 4096),
    ("width", "1024"),  # a string is not a number: no silent coercion
    ("steps", 0),
    ("steps", LIMITS.max_steps + 1),
    ("steps", 2.5),
    ("cfg", -0.5),
    ("cfg", 20.5),
    ("seed", -1),
    ("seed", 2**32),
    ("num_images", 0),
    ("num_images", 5),
    ("output_format", "gif"),
    ("output_quality", 0),
    ("output_quality", 101),
    ("sampler", "euler"),  # unknown field
]


@pytest.mark.parametrize("route", ["/flux", "/flux-dev"])
@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={str(v)[:12]}" for f, v in BAD_VALUES])
def test_bad_value_is_422_naming_the_field(app_client: TestClient, route: str, field: str, value: object) -> None:
    body = {**GOOD, field: value} if field != "prompt" else {field: value}
    assert_field(app_client.post(route, json=body), field)


@pytest.mark.parametrize("route", ["/flux", "/flux-dev"])
def test_missing_prompt_is_named(app_client: TestClient, route: str) -> None:
    assert_field(app_client.post(route, json={"width": 512}), "prompt")


def test_several_images_need_a_json_answer(app_client: TestClient) -> None:
    assert_field(app_client.post("/flux", json={**GOOD, "num_images": 2}), "num_images")


def test_malformed_json_and_non_objects_are_422(app_client: TestClient) -> None:
    r = app_client.post("/flux", content=b"{bad", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_request"
    r = app_client.post("/flux", json=[1, 2])
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_request"


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"authorization": KEY}]
)
def test_missing_or_wrong_key_is_401(app_client: TestClient, headers: dict) -> None:
    r = app_client.post("/flux", json=GOOD, headers={"authorization": "", **headers})
    assert r.status_code == 401
    assert error_of(r)["code"] == "unauthorized"
    assert app_client.get("/v1/models", headers={"authorization": "", **headers}).status_code == 401


@pytest.mark.parametrize(
    "headers", [{"authorization": f"Bearer {KEY}"}, {"authorization": "", "x-api-key": "other-key"}]
)
def test_either_key_header_passes_auth(app_client: TestClient, headers: dict) -> None:
    # Past auth and validation, the request meets the stopped Triton: 503, not 401.
    r = app_client.post("/flux", json=GOOD, headers=headers)
    assert r.status_code == 503, r.text


def test_auth_is_checked_before_the_body(app_client: TestClient) -> None:
    r = app_client.post("/flux", json={"nonsense": 1}, headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_oversized_body_is_413(app_client: TestClient) -> None:
    r = app_client.post("/flux", json={"prompt": "x" * 70_000})
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


def test_oversized_chunked_body_is_413(app_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 5_000
        yield b'"}'

    r = app_client.post("/flux", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_wrong_method(app_client: TestClient) -> None:
    r = app_client.post("/flux-pro", json=GOOD)
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = app_client.get("/flux")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"


def test_triton_down_is_503_with_retry_after(app_client: TestClient) -> None:
    r = app_client.post("/flux-dev", json=GOOD)
    assert r.status_code == 503
    assert error_of(r)["code"] == "backend_unavailable"
    assert int(r.headers["retry-after"]) > 0
    assert r.headers["x-request-id"]
    ready = app_client.get("/ready")
    assert ready.status_code == 503 and error_of(ready)["code"] == "backend_unavailable"


def test_service_routes(app_client: TestClient) -> None:
    health = app_client.get("/health", headers={"authorization": ""})
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    paths = app_client.get("/openapi.json", headers={"authorization": ""}).json()["paths"]
    assert {"/flux", "/flux-dev", "/health", "/ready", "/metrics", "/v1/models"} <= set(paths)
    schema = paths["/flux"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "$ref" in schema
    models = app_client.get("/v1/models").json()["data"]
    assert {(m["route"], m["checkpoint"], m["loaded"]) for m in models} == {
        ("/flux", "flux-schnell", False),
        ("/flux-dev", "flux-dev", False),
    }
    metrics = app_client.get("/metrics", headers={"authorization": ""}).text
    assert 'ryla_requests_total{route="/flux",status="422"}' in metrics


def test_defaults_come_from_the_registry() -> None:
    from api.schemas import request_model

    for path, route in ROUTES.items():
        defaults = request_model(route)(prompt="p")
        assert (defaults.steps, defaults.cfg, defaults.width, defaults.height) == (
            route.steps,
            route.cfg,
            route.width,
            route.height,
        ), path
