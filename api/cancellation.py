"""A request's work stops when its client goes away.

ASGI servers answer `receive()` with `http.disconnect` once the client closes the connection, after the body has
been read. The work (queueing for a slot, then the gRPC call to Triton) runs as a task beside a watcher of that
channel; when the client leaves first, the task is cancelled, which cancels the gRPC call: Triton marks the request
cancelled and the pipeline model stops before its next component call (model_repository/bls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import ApiError

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]


async def until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled and a 499 raised (which nobody reads:
    it is what the metrics count)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ApiError):
                await task
    if task not in done:
        raise ApiError(499, "the client closed the request; its generation was cancelled")
    return task.result()
