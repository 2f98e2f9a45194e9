"""What holds around every route: API keys, the body limit, unknown routes and methods, a stopped Triton, the
service routes, and the configuration. The real app in-process; its real tritonclient points at a closed port."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.errors import CODES
from api.samples import sample_body
from api.settings import PRICE_PER_SECOND, Settings
from registry import CHECKPOINTS, GROUPS, ROUTES, pipeline_model_of, task_of

from .fixtures import REPO_ROOT
from .stack_fixtures import free_port

GOOD = {"prompt": "a red fox"}


def valid_body(path: str) -> dict:
    return sample_body(ROUTES[path], size=ROUTES[path].limits.min_size, seed=None)


KEY, OTHER_KEY = "test-key-1", "other-key"
NO_AUTH = {"authorization": ""}  # overrides the client's default header


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(
        triton_grpc_url=f"127.0.0.1:{free_port()}", api_keys=f"{KEY}, {OTHER_KEY}", max_body_bytes=64_000
    )
    with TestClient(create_app(settings), headers={"authorization": f"Bearer {KEY}"}) as c:
        yield c


def error_of(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert r.headers["x-request-id"]
    return body["error"]


@pytest.mark.parametrize(
    "headers",
    [
        NO_AUTH,
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer "},
        {"authorization": KEY},  # no scheme
        {"authorization": f"Basic {KEY}"},
        {"authorization": "", "x-api-key": "wrong"},
        {"authorization": "", "x-api-key": ""},
        {"authorization": "", "x-api-key": KEY[:-1]},
    ],
)
def test_missing_or_wrong_key_is_401(client: TestClient, headers: dict) -> None:
    for path in ROUTES:
        error_of(client.post(path, json=valid_body(path), headers=headers), 401, "unauthorized")
    r = client.get("/v1/models", headers=headers)
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {OTHER_KEY}"},
        {"authorization": "", "x-api-key": OTHER_KEY},
        {"authorization": "", "x-api-key": KEY},
        {"authorization": f"Bearer {KEY}", "x-api-key": "stale"},  # one valid key is enough
    ],
)
def test_either_key_header_passes_auth(client: TestClient, headers: dict) -> None:
    # Past auth and validation, the request meets the stopped Triton: 503, not 401.
    for path in ROUTES:
        assert client.post(path, json=valid_body(path), headers=headers).status_code == 503
    assert client.get("/v1/models", headers=headers).status_code == 200


def test_auth_comes_before_the_body(client: TestClient) -> None:
    error_of(client.post("/flux", content=b"{not json", headers=NO_AUTH), 401, "unauthorized")
    error_of(client.post("/flux", content=b"x" * 100_000, headers=NO_AUTH), 401, "unauthorized")


def test_service_routes_need_no_key(client: TestClient) -> None:
    for path in ("/health", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path, headers=NO_AUTH).status_code == 200, path
    error_of(client.get("/ready", headers=NO_AUTH), 503, "backend_unavailable")


def test_oversized_body_is_413(client: TestClient) -> None:
    r = client.post("/flux", json={"prompt": "x" * 70_000})
    assert "64000" in error_of(r, 413, "payload_too_large")["message"]


def test_oversized_chunked_body_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed bytes are counted
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 5_000
        yield b'"}'

    r = client.post("/flux", content=chunks(), headers={"content-type": "application/json"})
    error_of(r, 413, "payload_too_large")


def test_body_just_under_the_limit_is_read(client: TestClient) -> None:
    # 63,9xx bytes: under the limit, so it is parsed; the prompt is then too long for the route.
    r = client.post("/flux", json={"prompt": "x" * 63_900})
    assert r.status_code == 422 and r.json()["error"]["field"] == "prompt"


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    for r in (client.post("/flux-pro", json=GOOD), client.get("/nope"), client.post("/v1/flux", json=GOOD)):
        error_of(r, 404, "not_found")
    for path in ROUTES:
        r = client.get(path)
        error_of(r, 405, "method_not_allowed")
        assert "POST" in r.headers["allow"]
    error_of(client.post("/health"), 405, "method_not_allowed")


def test_triton_down_is_503_with_retry_after(client: TestClient) -> None:
    for path in ROUTES:
        r = client.post(path, json=valid_body(path))
        err = error_of(r, 503, "backend_unavailable")
        assert "reach" in err["message"]
        assert int(r.headers["retry-after"]) > 0
    ready = client.get("/ready")
    error_of(ready, 503, "backend_unavailable")
    assert int(ready.headers["retry-after"]) > 0


def test_health(client: TestClient) -> None:
    body = client.get("/health", headers=NO_AUTH).json()
    assert body["status"] == "healthy"
    assert set(body["routes"]) == set(ROUTES) and set(body["groups"]) == set(GROUPS)


def test_openapi_names_every_route_with_its_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers=NO_AUTH).json()
    assert {*ROUTES, "/health", "/ready", "/metrics", "/v1/models"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    for path, route in ROUTES.items():
        op = spec["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        assert schema["additionalProperties"] is False and schema["required"] == [
            f.name for f in task_of(route).own if f.required
        ]
        assert schema["properties"]["steps"]["default"] == route.steps
        video = task_of(route).output.kind == "video"
        mimes = {"image/webp", "video/mp4"} if video else {"image/png", "image/jpeg", "image/webp"}
        assert {*mimes, "application/json"} <= set(op["responses"]["200"]["content"])
        assert {"x-cost-usd", "x-seed", "x-model"} <= set(op["responses"]["200"]["headers"])
        # Errors are documented as the one envelope, not FastAPI's default validation schema.
        assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
        assert op["security"]  # the key headers, for /docs' Authorize button
    assert "HTTPValidationError" not in schemas


# Every status a generating route can answer: the answer (200, or 202 for a job), the gateway's (400 from uvicorn,
# 401, 408, 413), validation's (422), the queue's (429) and the backend's (500, 503, 504). 405 for another method is
# left out.
GENERATING_STATUSES = {200, 202, 400, 401, 408, 413, 422, 429, 500, 503, 504}


def test_openapi_documents_every_status_a_route_gives(client: TestClient) -> None:
    spec = client.get("/openapi.json", headers=NO_AUTH).json()
    for path in ROUTES:
        responses = spec["paths"][path]["post"]["responses"]
        statuses = GENERATING_STATUSES | ({404} if ROUTES[path].lora else set())  # a LoRA not in the store
        assert set(responses) == {str(s) for s in statuses}, path
        assert responses["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobAccepted")
        for status in statuses - {200, 202}:
            entry = responses[str(status)]
            assert entry["description"] == CODES[status]
            assert entry["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    for path, operations in spec["paths"].items():  # what the gateway answers before any route runs
        for operation in operations.values():
            assert {"408", "413", "500"} <= set(operation["responses"]), path


def test_models_lists_every_route_not_loaded(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    rows = {row["path"]: row for row in body["data"]}
    assert set(rows) == set(ROUTES)
    for path, route in ROUTES.items():
        ckpt = CHECKPOINTS[route.checkpoint]
        assert rows[path] == {
            "path": path,
            "group": route.group,
            "checkpoint": ckpt.key,
            "model": f"hub:{ckpt.hub_id}@{ckpt.revision}",  # Triton cannot say, so the registry's source
            "triton_model": pipeline_model_of(path),
            "shares_model_with": [p for p, r in ROUTES.items() if r.checkpoint == route.checkpoint and p != path],
            "loaded": False,
        }


def test_metrics_count_requests_by_route_and_status(client: TestClient) -> None:
    client.post("/flux", json={"prompt": ""})
    client.get("/no-such-route")
    text = client.get("/metrics", headers=NO_AUTH).text
    assert 'ryla_requests_total{route="/flux",status="422"}' in text
    assert 'ryla_requests_total{route="other",status="404"}' in text
    assert 'ryla_request_seconds_bucket{le="0.1",route="/flux"}' in text
    assert "ryla_cold_start_seconds 0.0" in text  # no generation answered yet
    assert 'ryla_in_flight{group="flux"} 0.0' in text


def test_auth_is_off_without_keys() -> None:
    with TestClient(create_app(Settings(triton_grpc_url=f"127.0.0.1:{free_port()}"))) as c:
        assert c.post("/flux", json=GOOD).status_code == 503
        assert c.get("/v1/models").status_code == 200
        assert "security" not in c.get("/openapi.json").json()["paths"]["/flux"]["post"]


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RYLA_API_KEYS", " sk-alpha , sk-beta,,")
    monkeypatch.setenv("RYLA_GPU_TYPE", "H100")
    monkeypatch.setenv("RYLA_GROUPS", "flux")
    monkeypatch.setenv("RYLA_TRITON_GRPC_URL", "10.0.0.1:9001")
    s = Settings()
    assert (
        s.api_keys == ("sk-alpha", "sk-beta") and s.served_groups == ("flux",) and s.triton_grpc_url == "10.0.0.1:9001"
    )
    assert s.price == PRICE_PER_SECOND["H100"] and "sk-alpha" not in repr(s)
    monkeypatch.setenv("RYLA_PRICE_PER_SECOND", "0.5")
    monkeypatch.setenv("RYLA_API_KEYS", "")
    s = Settings()
    assert s.price == 0.5 and s.api_keys == ()
    assert Settings(groups="").served_groups == tuple(GROUPS)
    monkeypatch.setenv("RYLA_GROUPS", "nope")
    with pytest.raises(ValueError, match="unknown app groups"):
        Settings()


def test_body_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.body_timeout_s == 30 and s.header_timeout_s == 30 and s.drain_bytes == 4 * s.max_body_bytes
    monkeypatch.setenv("RYLA_BODY_TIMEOUT_S", "2.5")
    monkeypatch.setenv("RYLA_BODY_DRAIN_BYTES", "0")
    assert Settings().body_timeout_s == 2.5 and Settings().drain_bytes == 0
    for bad in ("0", "-1"):
        monkeypatch.setenv("RYLA_BODY_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match="body_timeout_s"):
            Settings()


def test_without_draining_a_body_under_the_limit_is_still_read() -> None:
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", max_body_bytes=64_000, body_drain_bytes=0)
    with TestClient(create_app(settings)) as c:
        assert c.post("/flux", json={"prompt": "x" * 3_000}).status_code == 503
        error_of(c.post("/flux", json={"prompt": "x" * 70_000}), 413, "payload_too_large")


def test_the_api_starts_without_the_model_libraries() -> None:
    """The adapter speaks HTTP and gRPC only: a fresh interpreter importing the app loads neither torch nor diffusers
    (torch alone took 2 s of every API start and restart, and its memory beside each worker)."""
    code = "import sys, api.app\nprint(sorted(m for m in ('torch', 'diffusers', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
