"""What a client meets at the HTTP layer of a real `python -m api` (uvicorn, with each of its HTTP/1.1 parsers):
requests uvicorn refuses itself, bodies and headers that never finish, an oversized body written whole before the
answer is read, bodies the JSON parser refuses, a trailing slash, and the docs pages' assets.

Triton points at a closed local port: nothing here gets as far as a generation.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httpx
import pytest

from api.protocol import IMPLEMENTATIONS

from .stack_fixtures import free_port

LIMIT = 1 << 20  # RYLA_MAX_BODY_BYTES; the drain bound is 4x that by default
DEADLINE_S = 1.0  # RYLA_BODY_TIMEOUT_S and RYLA_HEADER_TIMEOUT_S
ENV = {
    "RYLA_MAX_BODY_BYTES": str(LIMIT),
    "RYLA_BODY_TIMEOUT_S": str(DEADLINE_S),
    "RYLA_HEADER_TIMEOUT_S": str(DEADLINE_S),
}


@contextlib.contextmanager
def serving(http: str) -> Iterator[int]:
    """`python -m api --http <http>` on a free port; yields the port."""
    port = free_port()
    env = {**os.environ, "RYLA_TRITON_GRPC_URL": f"127.0.0.1:{free_port()}", **ENV}
    command = [sys.executable, "-m", "api", "--port", str(port), "--http", http, "--log-level", "warning"]
    process = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"api exited with {process.returncode}"
            assert time.monotonic() < deadline, "api did not come up in 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    with serving(request.param) as p:
        yield p


@pytest.fixture()
def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def exchange(port: int, data: bytes, timeout_s: float = 5.0) -> tuple[bytes, float]:
    """Sends `data` on a new connection and reads until the server closes it: what came back, and the seconds the
    server took to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        start = time.monotonic()
        if data:
            s.sendall(data)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
        return received, time.monotonic() - start


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines))
    return int(status_line.split()[1]), headers, body


def envelope_of(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/json" and int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"], error
    return error


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /flux HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /flux HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /flux HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHo st: x\r\n\r\n",
        b"POST /flux HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "negative-length", "text-length", "two-lengths", "header-name", "chunk-size"],
)
def test_requests_uvicorn_refuses_get_the_envelope(port: int, request_bytes: bytes) -> None:
    status, headers, body = parse(exchange(port, request_bytes)[0])
    envelope_of(status, headers, body, 400, "bad_request")
    assert headers["connection"] == "close"


def test_a_body_shorter_than_its_length_is_408_at_the_deadline(port: int) -> None:
    head = b"POST /flux HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    raw, seconds = exchange(port, head + b'{"prompt":')
    error = envelope_of(*parse(raw), 408, "request_timeout")
    assert "10 bytes" in error["message"]
    assert DEADLINE_S * 0.9 <= seconds < DEADLINE_S + 1.5


def test_a_connection_that_sends_nothing_is_closed(port: int) -> None:
    raw, seconds = exchange(port, b"")
    assert raw == b"" and DEADLINE_S * 0.9 <= seconds < DEADLINE_S + 1.5


def test_headers_that_never_end_are_408(port: int) -> None:
    raw, seconds = exchange(port, b"POST /flux HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
    envelope_of(*parse(raw), 408, "request_timeout")
    assert DEADLINE_S * 0.9 <= seconds < DEADLINE_S + 1.5


def _post_with_urllib(url: str, data: object, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/flux", data=data, headers=headers)  # type: ignore[arg-type]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    return caught.value.code, json.loads(caught.value.read())


def test_an_oversized_body_written_whole_still_reads_its_413(url: str) -> None:
    # urllib writes the whole body (and Connection: close) before it reads: the server must drain, not reset.
    status, body = _post_with_urllib(url, b"x" * (3 * LIMIT), {"content-type": "application/json"})
    assert status == 413 and body["error"]["code"] == "payload_too_large" and str(LIMIT) in body["error"]["message"]
    chunks = iter([b"x" * 65536] * (3 * LIMIT // 65536))  # no Content-Length: urllib sends it chunked
    status, body = _post_with_urllib(url, chunks, {"content-type": "application/json"})
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_a_client_that_waits_for_100_continue_gets_the_413_first(port: int) -> None:
    head = f"POST /flux HTTP/1.1\r\nHost: x\r\nContent-Length: {3 * LIMIT}\r\nExpect: 100-continue\r\n\r\n"
    raw, seconds = exchange(port, head.encode())
    envelope_of(*parse(raw), 413, "payload_too_large")
    assert seconds < DEADLINE_S * 0.9  # at once, not after waiting for a body that never comes


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b'{"prompt": "a f\xf6x"}', "application/json", "not UTF-8"),
        ('{"prompt": "a fox"}'.encode("utf-16"), "application/json", "not UTF-8"),
        (b'{"prompt": "a f\xf6x"}', "application/json; charset=latin-1", "latin-1"),
        (b'{"prompt": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "application/json", "nest"),
        (b'{"prompt": "a fox", "seed": ' + b"7" * 5_001 + b"}", "application/json", "digits"),
        (b'{"prompt": ', "application/json", "not valid JSON"),
    ],
    ids=["latin-1-bytes", "utf-16", "charset-latin-1", "nested-50000", "digits-5001", "truncated"],
)
def test_bodies_the_json_parser_refuses_are_422(url: str, body: bytes, content_type: str, says: str) -> None:
    r = httpx.post(f"{url}/flux", content=body, headers={"content-type": content_type}, timeout=10)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and says in error["message"], error
    assert "Traceback" not in error["message"] and "field" not in error


def test_a_body_in_utf8_passes_whatever_its_charset_says(url: str) -> None:
    # Past the parser and validation: the stopped Triton's 503.
    r = httpx.post(
        f"{url}/flux", content=b'{"prompt": "a fox"}', headers={"content-type": "application/json; charset=latin-1"}
    )
    assert r.status_code == 503, r.text


def test_a_trailing_slash_is_a_404_naming_the_route(url: str) -> None:
    r = httpx.post(f"{url}/flux/", json={"prompt": "a fox"}, follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"] == {
        "code": "not_found",
        "message": "no route /flux/; did you mean /flux?",
    }
    r = httpx.get(f"{url}/health/", follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"]["message"].endswith("did you mean /health?")
    r = httpx.post(f"{url}/nope/", json={}, follow_redirects=False)
    assert r.status_code == 404 and r.json()["error"]["message"] == "no route /nope/"


ASSET_TYPES = ("application/javascript", "text/javascript", "text/css", "image/png", "application/json")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_the_api_serves(url: str, page: str) -> None:
    r = httpx.get(f"{url}{page}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "://" not in r.text  # no CDN, no web fonts, no validator badge
    referenced = re.findall(r'(?:src|href)="([^"]+)"', r.text) + re.findall(
        r"""(?:url|spec-url)[:=]\s*['"]([^'"]+)""", r.text
    )
    assets = [u for u in referenced if not u.startswith("#")]
    assert len(assets) >= 2, r.text
    for asset in assets:
        assert asset.startswith("/"), asset
        got = httpx.get(f"{url}{asset}")
        assert got.status_code == 200 and got.headers["content-type"].startswith(ASSET_TYPES), (asset, got.headers)
        assert len(got.content) > 1000, asset
