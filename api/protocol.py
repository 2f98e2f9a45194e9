"""uvicorn's HTTP/1.1 protocols with the API's error envelope where uvicorn answers by itself, and a header deadline.

uvicorn refuses a request it cannot parse (a malformed request line, `Content-Length: -5`, headers over h11's size
limit) with a plain-text 400 before the app sees it; here that is the JSON envelope, code `bad_request`. uvicorn
also has no deadline for a request's headers, in either implementation: its keep-alive timer runs only between
requests and any byte cancels it, so a client that opens a connection and sends nothing, or headers that never
end, holds it forever. Here the headers must be complete `header_timeout_s` after the connection opens or its last
answer went out; otherwise a 408 envelope if some bytes came (the connection just closes if none did).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import envelope_bytes

IMPLEMENTATIONS: dict[str, type[asyncio.Protocol]] = {"h11": H11Protocol}
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    IMPLEMENTATIONS["httptools"] = HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn; h11 always comes with it
    pass

REASONS = {400: b"Bad Request", 408: b"Request Timeout"}


class _EnvelopeMixin:
    header_timeout_s: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None
    _bytes_came = False

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "the request is not valid HTTP/1.1 (its request line, a header or its body framing)")

    def _refuse(self, status: int, message: str) -> None:
        body = envelope_bytes(status, message)
        head = [b"HTTP/1.1 %d %s" % (status, REASONS[status])]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json", b"content-length: %d" % len(body), b"connection: close"]
        # Written raw, past the parser's state machine: the connection closes right after.
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._bytes_came = False
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline, self.cycle)

    def _header_deadline(self, cycle: Any) -> None:
        # A new request began (its headers were complete) or one is still being answered: nothing to do.
        if self.cycle is not cycle or (cycle is not None and not cycle.response_complete):
            return
        if self.transport.is_closing():
            return
        if self._bytes_came:
            self._refuse(408, f"the request's headers did not arrive within {self.header_timeout_s:g} s")
        else:
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        self._bytes_came = True
        super().data_received(data)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)  # type: ignore[misc]


def protocol_class(implementation: str, header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's `http=` class: "h11", "httptools", or "auto" (httptools where installed, as uvicorn picks)."""
    if implementation == "auto":
        implementation = "httptools" if "httptools" in IMPLEMENTATIONS else "h11"
    base = IMPLEMENTATIONS[implementation]
    return type(f"Envelope{base.__name__}", (_EnvelopeMixin, base), {"header_timeout_s": header_timeout_s})
