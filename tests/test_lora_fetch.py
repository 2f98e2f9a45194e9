"""loras/fetch.py against a local HTTPS server (127.0.0.1 only, a certificate made here for the name loras.test):
a LoRA fetched once and cached by its content hash; each redirect checked before its connection (to a private
address, to http, to a host off the allowlist: refused); the size and time caps; a body that is not safetensors."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from loras.fetch import Fetcher, FetchFailed, LoraTooLarge
from loras.store import UnsafeLora
from loras.urls import UnsafeUrl, check_address

HOST = "loras.test"
pytestmark = pytest.mark.usefixtures("loopback_only")  # no connection leaves this machine's loopback
LORA = save({"lora_unet_x.lora_down.weight": np.arange(32, dtype=np.float32).reshape(4, 8)})


class Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for k, v in {"content-length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Handler.hits.append(self.path)
        port = self.server.server_address[1]
        routes = {
            "/a.safetensors": lambda: self._send(200, LORA),
            "/to-a": lambda: self._send(302, location="/a.safetensors"),
            "/to-private": lambda: self._send(302, location="https://10.0.0.1/a.safetensors"),
            "/to-metadata": lambda: self._send(307, location="https://169.254.169.254/latest/meta-data"),
            "/to-http": lambda: self._send(302, location=f"http://{HOST}:{port}/a.safetensors"),
            "/to-other": lambda: self._send(302, location=f"https://other.test:{port}/a.safetensors"),
            "/big": lambda: self._send(200, LORA + b"\0" * 4096),
            "/pickle": lambda: self._send(200, b"\x80\x04\x95" + b"\0" * 64),
        }
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("content-length", "100000")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gives up first
                for _ in range(40):
                    self.wfile.write(b"\0" * 8)
                    self.wfile.flush()
                    time.sleep(0.1)
            return
        routes.get(self.path, lambda: self._send(404))()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={HOST}",
         "-addext", f"subjectAltName=DNS:{HOST}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], cert
    finally:
        httpd.shutdown()


def loopback_for_tests(address: str, field: str) -> object:
    """The public-address rule, except this test server's 127.0.0.1 (only the checker is swapped, not its use)."""
    return None if address == "127.0.0.1" else check_address(address, field)


def fetcher(server: tuple[int, Path], cache: Path, **kw: object) -> Fetcher:
    _, cert = server

    def dns(host: str, port: int, type: int = 0) -> list[tuple]:  # every test name is this machine's test server
        return [(2, type, 6, "", ("127.0.0.1", port))]

    # Allowed: the test host, and the private literals, so that the address rule is what refuses them (other.test
    # is not on the list).
    options = {"allowed_hosts": (HOST, "10.0.0.1", "169.254.169.254"), **kw}
    return Fetcher(
        cache, context=ssl.create_default_context(cafile=str(cert)), resolver=dns, check=loopback_for_tests, **options
    )  # type: ignore[arg-type]


def url(server: tuple[int, Path], path: str) -> str:
    return f"https://{HOST}:{server[0]}{path}"


def test_a_lora_is_fetched_once_and_cached_by_its_content_hash(server, tmp_path: Path) -> None:
    f = fetcher(server, tmp_path)
    Handler.hits.clear()
    first = f.fetch(url(server, "/to-a"))
    assert first.name == hashlib.sha256(LORA).hexdigest() + ".safetensors" and first.read_bytes() == LORA
    assert f.fetch(url(server, "/to-a")) == first
    assert Handler.hits == ["/to-a", "/a.safetensors"]  # the second came from the cache


@pytest.mark.parametrize(
    ("path", "error", "says"),
    [
        ("/to-private", UnsafeUrl, "not a public address"),
        ("/to-metadata", UnsafeUrl, "not a public address"),
        ("/to-http", UnsafeUrl, "only https"),
        ("/to-other", UnsafeUrl, "allowlist"),
        ("/big", LoraTooLarge, "over the limit"),
        ("/pickle", UnsafeLora, "not a valid safetensors"),
        ("/missing", FetchFailed, "HTTP 404"),
    ],
)
def test_refused_fetches_leave_nothing_in_the_cache(server, tmp_path: Path, path: str, error: type, says: str) -> None:
    f = fetcher(server, tmp_path / "cache", max_bytes=len(LORA) + 100)
    with pytest.raises(error, match=says) as info:
        f.fetch(url(server, path), field="loras[1].url")
    assert info.value.field == "loras[1].url"
    assert not list((tmp_path / "cache").glob("*.safetensors")) and not list((tmp_path / "cache").glob("*.part"))


def test_the_fetch_is_bounded_in_time(server, tmp_path: Path) -> None:
    f = fetcher(server, tmp_path, timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(FetchFailed, match="within 1 s"):
        f.fetch(url(server, "/slow"))
    assert time.monotonic() - t0 < 3.0


def test_the_certificate_must_name_the_host(server, tmp_path: Path) -> None:
    f = fetcher(server, tmp_path)
    f.context = ssl.create_default_context()  # the system's roots: the test certificate is not among them
    with pytest.raises(FetchFailed, match="SSL"):
        f.fetch(url(server, "/a.safetensors"))
