"""What one app holds across requests, and the `Annotated` dependencies through which routes reach it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from registry import GROUPS, Route, UnsupportedRoute, routes_of, unsupported_of

from .auth import KeyChecker
from .gate import GroupGate
from .job_store import JobStore, store_of
from .jobs import JobRunner
from .loras import LoraSources
from .metrics import Metrics
from .settings import Settings
from .triton_client import TritonBackend


@dataclass
class ApiState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    gates: dict[str, GroupGate] = field(default_factory=dict)
    loras: LoraSources = field(init=False)
    keys: KeyChecker = field(init=False)
    job_store: JobStore = field(init=False)
    jobs: JobRunner = field(init=False)
    started: float = field(default_factory=time.time)
    first_generation_done: bool = False
    _backend: TritonBackend | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.gates = {
            name: GroupGate(name, GROUPS[name].max_concurrency, GROUPS[name].max_queue, s.retry_after_s)
            for name in s.served_groups
        }
        self.loras = LoraSources.of(s)
        self.keys = KeyChecker(s.api_keys)
        self.job_store = store_of(s.job_store, s.job_retention_s, s.job_max_stored)
        self.jobs = JobRunner(self.job_store, s.job_cancel_poll_s)

    @property
    def routes(self) -> list[Route]:
        """The registry's routes of the groups this API serves."""
        return [r for g in self.settings.served_groups for r in routes_of(g)]

    @property
    def unsupported(self) -> list[UnsupportedRoute]:
        """The registry's refused routes (501) of the groups this API serves."""
        return [r for g in self.settings.served_groups for r in unsupported_of(g)]

    def backend(self) -> TritonBackend:
        # Made by the lifespan in the serving loop; made on first use where no lifespan ran (httpx ASGITransport).
        if self._backend is None:
            s = self.settings
            self._backend = TritonBackend(s.triton_grpc_url, s.retry_after_s, s.probe_timeout_s)
        return self._backend

    async def close(self) -> None:
        await self.jobs.close()
        if self._backend is not None:
            await self._backend.close()
            self._backend = None

    def record_cold_start_phase(self, phase: str, seconds: float) -> None:
        """Seconds from the container's start to `phase`, measured by the host that started Triton (triton_modal.py).
        The API itself measures only its own start to its first answer (`ryla_cold_start_seconds`)."""
        self.metrics.cold_start_phase.labels(phase=phase).set(seconds)

    def claim_cold_start(self) -> bool:
        """True exactly once: for this process's first generation that Triton answered."""
        cold, self.first_generation_done = not self.first_generation_done, True
        return cold


def _state(request: Request) -> ApiState:
    return request.app.state.api


def _backend(request: Request) -> TritonBackend:
    return _state(request).backend()


State = Annotated[ApiState, Depends(_state)]
Backend = Annotated[TritonBackend, Depends(_backend)]
