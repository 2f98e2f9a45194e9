"""The LoRA fields refused through the API before anything is read, fetched or queued (api.md: 422 naming the
field, 404 naming the files tried, 413 for size): paths out of the store, pickles, URLs that are not https, not on
the allowlist or that resolve or redirect to loopback, private, link-local or metadata addresses, too many LoRAs,
scales out of range, lora_id with lora_name. No test here connects to anything but 127.0.0.1 (`loopback_only` fails
it otherwise): names meant to resolve to private addresses go through a patched resolver, and the one server is a
local HTTPS server (tests/test_lora_fetch.py's) that does the redirects."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save_file

from api.app import create_app
from api.settings import Settings
from loras import Fetcher

from .stack_fixtures import free_port
from .test_lora_fetch import HOST, Handler, loopback_for_tests, server  # noqa: F401 - `server` is a fixture

ROUTE = "/qwen-image-2512-lora"  # a family with a lora_id prefix (qwen-character-{id} first)
PRIVATE = {"private.test": "10.1.2.3", "metadata.test": "169.254.169.254", "loop.test": "127.0.0.1"}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    folder.mkdir()
    save_file({"transformer.x.lora_A.weight": np.zeros((1, 2), np.float32)}, str(folder / "ok.safetensors"))
    (folder / "evil.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle under the right suffix
    (tmp_path / "outside.safetensors").write_bytes((folder / "ok.safetensors").read_bytes())
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    return folder


@pytest.fixture()
def api(store: Path, tmp_path: Path, loopback_only: list) -> Iterator[tuple[TestClient, Path]]:
    """The API (no Triton behind it: nothing here may get that far) with every address literal and name of these
    tests on its allowlist, so that the address rules are what refuse them; its resolver answers PRIVATE."""
    cache = tmp_path / "cache"
    settings = Settings(
        triton_grpc_url=f"127.0.0.1:{free_port()}",
        lora_store=store,
        lora_cache=cache,
        lora_hosts=(HOST, *PRIVATE, "127.0.0.1", "10.0.0.8", "169.254.169.254", "::1", "[::1]"),
        lora_max_bytes=1024,
    )
    app = create_app(settings)

    def dns(host: str, port: int, type: int = 0) -> list[tuple]:
        return [(2, type, 6, "", (PRIVATE[host], port))]

    app.state.api.loras.fetcher.resolver = dns
    with TestClient(app) as client:
        yield client, cache


def post(client: TestClient, **fields: object) -> tuple[int, dict]:
    r = client.post(ROUTE, json={"prompt": "a portrait", "seed": 1, "steps": 2, "width": 256, "height": 256, **fields})
    return r.status_code, r.json().get("error", {})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"lora_name": "../x"}, "lora_name"),
        ({"lora_name": "/etc/passwd"}, "lora_name"),
        ({"lora_name": "sub/x.safetensors"}, "lora_name"),
        ({"lora_id": "../../x"}, "lora_id"),
        ({"lora_name": "x.ckpt"}, "lora_name"),
        ({"lora_name": "evil"}, "lora_name"),  # pickle bytes named .safetensors: the header parse refuses it
        ({"lora_name": "link"}, "lora_name"),  # a link out of the store
        ({"lora_name": "ok", "loras": [{"name": "../ok", "scale": 1.0}]}, "loras[0].name"),
    ],
)
def test_names_out_of_the_store_or_not_safetensors_are_422(api, fields: dict, field: str) -> None:
    status, error = post(api[0], **fields)
    assert (status, error.get("field")) == (422, field), error


@pytest.mark.parametrize(
    "url",
    [
        f"http://{HOST}/a.safetensors",
        "https://127.0.0.1/a.safetensors",
        "https://10.0.0.8/a.safetensors",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/a.safetensors",
        "https://private.test/a.safetensors",  # a name that resolves to a private address
        "https://metadata.test/a.safetensors",
        "https://loop.test/a.safetensors",
        "https://elsewhere.example/a.safetensors",  # not on the allowlist
    ],
)
def test_urls_off_the_rules_are_422_and_nothing_is_fetched(api, loopback_only: list, url: str) -> None:
    client, cache = api
    Handler.hits.clear()
    status, error = post(client, lora_name="ok", loras=[{"url": url, "scale": 0.5}])
    assert (status, error.get("field")) == (422, "loras[0].url"), error
    assert loopback_only == [] and Handler.hits == []  # refused before any connection
    assert not cache.exists() or not any(cache.iterdir())


def _via_test_server(api, https_server) -> TestClient:  # noqa: ANN001
    """The API's fetcher pointed at the local HTTPS server (loras.test -> 127.0.0.1, its certificate trusted)."""
    client, cache = api
    settings = client.app.state.api.settings
    _, cert = https_server

    def dns(host: str, port_: int, type: int = 0) -> list[tuple]:
        return [(2, type, 6, "", ("127.0.0.1" if host == HOST else PRIVATE[host], port_))]

    client.app.state.api.loras.fetcher = Fetcher(
        cache,
        allowed_hosts=settings.lora_hosts,
        max_bytes=settings.lora_max_bytes,
        timeout_s=5.0,
        context=ssl.create_default_context(cafile=str(cert)),
        resolver=dns,
        check=loopback_for_tests,
    )
    return client


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/to-private", 422, "10.0.0.1"),  # a redirect to a private address: checked before its connection
        ("/to-metadata", 422, "169.254.169.254"),
        ("/to-http", 422, "https"),
        ("/pickle", 422, "safetensors"),
        ("/big", 413, "1024"),
    ],
)
def test_fetches_refused_on_the_way_leave_nothing(api, server, path: str, status: int, says: str) -> None:  # noqa: F811
    client = _via_test_server(api, server)
    Handler.hits.clear()
    code, error = post(client, lora_name="ok", loras=[{"url": f"https://{HOST}:{server[0]}{path}", "scale": 1.0}])
    assert (code, error.get("field")) == (status, "loras[0].url") and says in error["message"], error
    assert Handler.hits == [path]  # the redirect's target was never asked for
    cache = api[1]
    assert not cache.exists() or [p.name for p in cache.iterdir() if p.suffix == ".safetensors"] == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"lora_name": "ok", "loras": [{"name": "ok", "scale": 1.0}] * 5}, "loras"),
        ({"lora_name": "ok", "lora_strength": 3}, "lora_strength"),
        ({"lora_name": "ok", "lora_strength": -2.5}, "lora_strength"),
        ({"lora_name": "ok", "loras": [{"name": "ok", "scale": 3.0}]}, "loras[0].scale"),
        ({"lora_name": "ok", "loras": [{"name": "ok", "url": "https://x.test/a", "scale": 1.0}]}, "loras[0]"),
        ({"lora_name": "ok", "loras": [{"name": "ok", "weight": 1.0}]}, "loras[0].weight"),
        ({"lora_id": "7", "lora_name": "ok"}, "lora_name"),
        ({}, "lora_id"),
    ],
)
def test_lora_fields_out_of_their_rules_are_422_naming_them(api, fields: dict, field: str) -> None:
    status, error = post(api[0], **fields)
    assert (status, error.get("field")) == (422, field), error


def test_a_missing_lora_is_404_naming_the_files_tried(api) -> None:
    status, error = post(api[0], lora_id="42")
    assert (status, error["code"], error["field"]) == (404, "not_found", "lora_id")
    assert "qwen-character-42.safetensors or character-42.safetensors" in error["message"]
    status, error = post(api[0], lora_name="ok", loras=[{"name": "absent", "scale": 1.0}])
    assert (status, error["field"]) == (404, "loras[0].name") and "absent.safetensors" in error["message"], error
