"""Fetch an https LoRA URL under the rules of urls.py, into a cache named by content hash.

Each hop (the URL, then every redirect) is checked before its connection: scheme, allowlist, and the addresses its
host resolves to. The connection goes to that checked address, with TLS verified for the host name (SNI and the
certificate), so a second DNS answer cannot redirect it. The body is capped in bytes and the whole fetch in time,
and what arrives must parse as safetensors before it enters the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

from .store import UnsafeLora, check_safetensors
from .urls import AddressCheck, Resolver, Target, UnsafeUrl, check_address, check_url, resolve_public

MAX_REDIRECTS = 5
CHUNK = 1 << 20


class LoraTooLarge(ValueError):
    """Over the size cap (api.md: 413 `payload_too_large`)."""

    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"{field}: the LoRA is over the limit of {limit} bytes")
        self.field = field


class FetchFailed(RuntimeError):
    """The host answered no LoRA (an HTTP error, a timeout, a broken connection): a 422 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a checked address; TLS verified against the URL's host name, not the address."""

    def __init__(self, target: Target, address: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address, self._tls = address, context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Fetcher:
    cache_dir: Path
    allowed_hosts: tuple[str, ...] = ()
    max_bytes: int = 2 * 1024**3
    timeout_s: float = 120.0
    context: ssl.SSLContext = field(default_factory=ssl.create_default_context)
    resolver: Resolver = socket.getaddrinfo
    check: AddressCheck = check_address

    def _index(self) -> Path:
        return self.cache_dir / "urls.json"

    def cached(self, url: str) -> Path | None:
        try:
            digest = json.loads(self._index().read_text()).get(url)
        except (OSError, ValueError):
            return None
        path = self.cache_dir / f"{digest}.safetensors" if digest else None
        return path if path is not None and path.is_file() else None

    def fetch(self, url: str, field: str = "url") -> Path:
        """The local file of `url`'s LoRA: from the cache, or fetched, checked and stored by its sha256."""
        hit = self.cached(url)
        if hit is not None:
            return hit
        deadline = time.monotonic() + self.timeout_s
        here = url
        for _ in range(MAX_REDIRECTS + 1):
            target = check_url(here, self.allowed_hosts, field, self.check)
            address = resolve_public(target, field, self.resolver, self.check)[0]
            conn = _PinnedHTTPS(target, address, self.context, timeout=max(deadline - time.monotonic(), 0.1))
            try:
                conn.request("GET", target.path, headers={"Host": target.host, "Accept": "*/*"})
                response = conn.getresponse()
                if response.status in (301, 302, 303, 307, 308) and response.getheader("location"):
                    here = urljoin(here, response.getheader("location", ""))
                    continue  # checked again at the top, before its connection
                if response.status != 200:
                    raise FetchFailed(field, f"the host answered HTTP {response.status}")
                return self._store(url, response, deadline, field)
            except (OSError, http.client.HTTPException) as exc:
                raise FetchFailed(field, f"fetching the LoRA failed ({type(exc).__name__})") from exc
            finally:
                conn.close()
        raise FetchFailed(field, f"more than {MAX_REDIRECTS} redirects")

    def _store(self, url: str, response: http.client.HTTPResponse, deadline: float, field: str) -> Path:
        declared = response.getheader("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise LoraTooLarge(field, self.max_bytes)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".part", delete=False) as part:
            try:
                while chunk := response.read1(CHUNK):  # what has arrived, so the deadline is checked often
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise LoraTooLarge(field, self.max_bytes)
                    if time.monotonic() > deadline:
                        raise FetchFailed(field, f"the LoRA did not arrive within {self.timeout_s:g} s")
                    digest.update(chunk)
                    part.write(chunk)
                part.close()
                check_safetensors(Path(part.name), field)
            except (LoraTooLarge, FetchFailed, UnsafeLora):
                os.unlink(part.name)
                raise
        path = self.cache_dir / f"{digest.hexdigest()}.safetensors"
        os.replace(part.name, path)
        index = {}
        with contextlib.suppress(OSError, ValueError):  # none yet, or unreadable: start it again
            index = json.loads(self._index().read_text())
        index[url] = digest.hexdigest()
        tmp = self._index().with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self._index())
        return path


__all__ = ["FetchFailed", "Fetcher", "LoraTooLarge", "UnsafeUrl"]
