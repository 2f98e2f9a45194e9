"""Per app group: at most `max_concurrency` generations in flight to Triton and `max_queue` waiting; beyond that
the API answers 429 at once instead of letting requests pile up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .errors import ApiError


class GroupGate:
    def __init__(self, name: str, max_concurrency: int, max_queue: int, retry_after_s: int) -> None:
        self.name = name
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.waiting = 0
        self.in_flight = 0

    def check_room(self) -> None:
        """429 when a new request would find no slot and no place in the queue."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise ApiError(
                429, f"the {self.name} queue is full; retry later", headers={"Retry-After": str(self.retry_after_s)}
            )

    @asynccontextmanager
    async def slot(self, max_wait_s: float | None = None) -> AsyncIterator[float]:
        """Holds a generation slot; yields the seconds spent queueing. `max_wait_s`: a request that gets no slot
        within it is answered 504 (its answer deadline passed in the queue)."""
        self.check_room()
        t0 = time.perf_counter()
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), max_wait_s)
        except TimeoutError:
            raise ApiError(504, f"no {self.name} generation slot freed before the answer deadline") from None
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield time.perf_counter() - t0
        finally:
            self.in_flight -= 1
            self._slots.release()
