"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

The check runs in the gateway middleware, before the body is read, so an unauthenticated client cannot make the API
buffer or parse anything. The security schemes below only document the two headers in OpenAPI (/docs shows an
Authorize button); they never reject a request themselves.
"""

from __future__ import annotations

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
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if not given:
            return False
        # Constant time against every key, no early exit: the timing tells nothing about which key came close.
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        return any(matches)


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key")

# Route dependencies that put both schemes into the OpenAPI of the protected routes.
DOCUMENTED_SCHEMES = [Security(_bearer), Security(_api_key)]
