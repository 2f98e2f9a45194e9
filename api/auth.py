"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

The check runs in the gateway middleware, before the body is read, so an unauthenticated client cannot make the API
buffer or parse anything. The security schemes below only document the two headers in OpenAPI (/docs shows an
Authorize button); they never reject a request themselves.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPBearer


class KeyChecker:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = tuple(k.encode() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        """Any presented key (X-API-Key, or the Bearer token) that matches a configured key lets the request in."""
        return self.matching(headers) is not None

    def matching(self, headers: dict[bytes, bytes]) -> bytes | None:
        """The configured key that the request presents, if any."""
        auth = headers.get(b"authorization", b"")
        given = [headers.get(b"x-api-key", b""), auth[7:].strip() if auth[:7].lower() == b"bearer " else b""]
        # Every candidate against every key, no early exit: the timing tells nothing about which came close.
        matches = [key for g in given if g for key in self.keys if hmac.compare_digest(g, key)]
        return matches[0] if matches else None

    def owner(self, headers: dict[bytes, bytes]) -> str:
        """Who made a job: a digest of the key it came with ("" with keys off), never the key itself."""
        key = self.matching(headers) if self.enabled else None
        return hashlib.sha256(key).hexdigest()[:32] if key else ""


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key")

# Route dependencies that put both schemes into the OpenAPI of the protected routes.
DOCUMENTED_SCHEMES = [Security(_bearer), Security(_api_key)]
