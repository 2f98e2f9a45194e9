"""ASGI middleware that runs before any route: request ids, the body-size limit, API keys, request metrics.

Plain ASGI rather than BaseHTTPMiddleware so an oversized body is refused while it streams in, before anything
parses it.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from .metrics import Metrics

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def _answer(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = _error_body(status, code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        api_keys: tuple[str, ...],
        protected: Callable[[str], bool],
        metrics: Metrics,
        route_label: Callable[[str], str],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.protected = protected
        self.metrics = metrics
        self.route_label = route_label

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        # Constant-time comparison against every key: no timing hint about which prefix matched.
        return given is not None and any(hmac.compare_digest(given, key) for key in self.api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["request_id"] = uuid.uuid4().hex
        state["arrival"] = time.perf_counter()
        path = scope["path"]
        label = self.route_label(path)
        status_seen: list[int] = []

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                message.setdefault("headers", []).append((b"x-request-id", state["request_id"].encode()))
            await send(message)

        try:
            headers = dict(scope["headers"])
            if self.api_keys and self.protected(path) and not self._authorized(headers):
                await _answer(
                    send_counted,
                    401,
                    "unauthorized",
                    "a valid API key is required (Authorization: Bearer or X-API-Key)",
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await _answer(send_counted, 413, "payload_too_large", f"the body is over {self.max_body_bytes} bytes")
                return
            # Read the body here, bounded, and replay it: a chunked upload cannot slip past the limit either.
            chunks: list[bytes] = []
            size = 0
            more = scope["method"] in {"POST", "PUT", "PATCH"}
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await _answer(
                        send_counted, 413, "payload_too_large", f"the body is over {self.max_body_bytes} bytes"
                    )
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_counted)
        finally:
            status = status_seen[0] if status_seen else 500
            self.metrics.requests.labels(route=label, status=str(status)).inc()
