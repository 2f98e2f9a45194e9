"""ASGI middleware that runs before any route: request ids, API keys, the body-size limit, request metrics.

Plain ASGI rather than BaseHTTPMiddleware so an unauthenticated request is refused before its body is read, and an
oversized body is refused while it streams in, before anything buffers or parses it in full. The whole body has a
deadline (408), and the rest of an oversized one is drained, within bounds, before its 413 (see _read_body).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .auth import KeyChecker
from .errors import envelope_bytes
from .metrics import Metrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# After a 408 or 413 the rest of the body may still be on its way: the connection cannot serve another request.
CLOSE = ((b"connection", b"close"),)


async def _answer(send: Send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = envelope_bytes(status, message)
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


@dataclass
class _Body:
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    complete: bool = False  # its last message came
    gone: bool = False  # the client disconnected first


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_timeout_s: float,
        drain_bytes: int,
        keys: KeyChecker,
        protected: Callable[[str], bool],
        metrics: Metrics,
        route_label: Callable[[str], str],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.drain_bytes = max(drain_bytes, max_body_bytes)  # what is read in all, the body itself included
        self.keys = keys
        self.protected = protected
        self.metrics = metrics
        self.route_label = route_label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        # Starlette exposes scope["state"] as request.state: the routes read the id and the arrival time there.
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrival"] = arrival = time.perf_counter()
        path = scope["path"]
        status_seen: list[int] = []

        async def send_tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        client_gone = False
        try:
            client_gone = not await self._gate(scope, receive, send_tagged)
        finally:
            # No response started: the client left mid-body (499, nginx's "client closed request"), or an exception
            # escaped and Starlette's outer handler answers 500.
            status = status_seen[0] if status_seen else 499 if client_gone else 500
            label = self.route_label(path)
            self.metrics.requests.labels(route=label, status=str(status)).inc()
            self.metrics.latency.labels(route=label).observe(time.perf_counter() - arrival)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answers the request; False when the client disconnected before its body was in."""
        headers = dict(scope["headers"])
        if self.keys.enabled and self.protected(scope["path"]) and not self.keys.authorized(headers):
            message = "a valid API key is required (Authorization: Bearer <key> or X-API-Key: <key>)"
            await _answer(send, 401, message, [(b"www-authenticate", b"Bearer")])
            return True
        too_large = f"the body is over the limit of {self.max_body_bytes} bytes"
        declared = headers.get(b"content-length", b"")
        size = int(declared) if declared.isdigit() else 0
        # Declared over the limit: a client waiting for 100-continue has sent nothing yet, and a body past the drain
        # bound is not worth reading, so both get the 413 now; any other is drained first (_read_body).
        waits = headers.get(b"expect", b"").lower() == b"100-continue"
        if size > self.max_body_bytes and (waits or size > self.drain_bytes):
            await _answer(send, 413, too_large, CLOSE)
            return True
        # Read the body here, counting, and replay it: a chunked upload without Content-Length is bounded too.
        body = await self._read_body(receive)
        if body.gone:
            return False
        if body.size > self.max_body_bytes:
            await _answer(send, 413, too_large, CLOSE)
            return True
        if not body.complete:
            message = f"the body did not arrive within {self.body_timeout_s:g} s ({body.size} bytes came)"
            await _answer(send, 408, message, CLOSE)
            return True
        chunks = body.chunks
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the real channel, so a disconnect is still seen

        await self.app(scope, replay, send)
        return True

    async def _read_body(self, receive: Receive) -> _Body:
        """Reads the body within its deadline. Past the size limit the rest is read and dropped, up to drain_bytes:
        a client that writes its whole body before it reads the answer would otherwise meet a reset, not the 413."""
        body = _Body()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while not body.complete and body.size <= self.drain_bytes:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        body.gone = True
                        return body
                    chunk = message.get("body", b"")
                    body.size += len(chunk)
                    body.complete = not message.get("more_body", False)
                    if body.size <= self.max_body_bytes:
                        body.chunks.append(chunk)
                    else:
                        body.chunks.clear()
        except TimeoutError:
            pass
        return body
