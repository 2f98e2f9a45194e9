"""Where jobs live: one small key-value interface that every container of an app group can reach.

Locally (tests, `make serve`) the store is this process's memory; on Modal it is a Modal Dict, so a job made in one
container can be read or cancelled through another. A job is three keys: its record (status, progress: small,
rewritten at every step), its answer (written once, when it succeeds) and a cancel mark (written by whoever cancels,
read by the container that runs it), so a cancel never races a progress write.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: str
    route: str
    owner: str  # a digest of the API key that made it ("" without keys): only that key reads or cancels it
    as_json: bool  # the submitting request's Accept: what /result answers, as the synchronous call would
    status: JobStatus = JobStatus.QUEUED
    step: int = 0
    steps: int = 0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    error: dict[str, Any] | None = None  # the error envelope's `error` of a failed job, and its HTTP status
    error_status: int | None = None

    def but(self, **changes: Any) -> Job:
        now = time.time()
        status = changes.get("status", self.status)
        ended_at = self.ended_at if self.ended_at is not None or not status.ended else now
        return replace(self, **changes, updated_at=now, ended_at=ended_at)

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status)}

    @classmethod
    def of_record(cls, record: dict[str, Any]) -> Job:
        return cls(**{**record, "status": JobStatus(record["status"])})


@dataclass(frozen=True)
class StoredAnswer:
    """A succeeded job's answer, in the parts from which both of its forms are rendered (api/answer.py)."""

    items: tuple[tuple[bytes, str], ...]  # (encoded image or video, mime type)
    meta: dict[str, Any]  # the JSON answer without the pixel data
    headers: dict[str, str]


class KeyValue(Protocol):
    """The few operations a job store needs: modal.Dict's `.aio` methods, or a dict's."""

    async def get(self, key: str) -> Any: ...
    async def put(self, key: str, value: Any) -> None: ...
    async def pop(self, key: str) -> None: ...
    def keys(self) -> AsyncIterator[str]: ...


class LocalKeyValue:
    """This process's memory: one API process holds every job (make serve, tests)."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    async def get(self, key: str) -> Any:
        return self._data.get(key)

    async def put(self, key: str, value: Any) -> None:
        self._data[key] = value

    async def pop(self, key: str) -> None:
        self._data.pop(key, None)

    async def keys(self) -> AsyncIterator[str]:
        for key in list(self._data):
            yield key


class ModalDictKeyValue:
    """A Modal Dict that every container of the group opens by name (triton_modal.py sets RYLA_JOB_STORE)."""

    def __init__(self, name: str) -> None:
        import modal  # only on Modal; the local stack never imports it

        self._dict = modal.Dict.from_name(name, create_if_missing=True)

    async def get(self, key: str) -> Any:
        return await self._dict.get.aio(key)

    async def put(self, key: str, value: Any) -> None:
        await self._dict.put.aio(key, value)

    async def pop(self, key: str) -> None:
        if await self._dict.contains.aio(key):
            await self._dict.pop.aio(key)

    async def keys(self) -> AsyncIterator[str]:
        async for key in self._dict.keys.aio():
            yield key


_JOB, _ANSWER, _CANCEL = "job:", "answer:", "cancel:"


class JobStore:
    """Jobs over a KeyValue; ended jobs are dropped `retention_s` after they end, and beyond `max_jobs` stored the
    oldest ended ones first."""

    def __init__(self, kv: KeyValue, retention_s: float, max_jobs: int, sweep_every_s: float = 60.0) -> None:
        self.kv = kv
        self.retention_s = retention_s
        self.max_jobs = max_jobs
        self.sweep_every_s = sweep_every_s
        self._swept = 0.0

    async def save(self, job: Job) -> None:
        await self.kv.put(_JOB + job.id, job.to_record())

    async def load(self, job_id: str) -> Job | None:
        record = await self.kv.get(_JOB + job_id)
        if record is None:
            return None
        job = Job.of_record(record)
        if job.ended_at is not None and time.time() - job.ended_at > self.retention_s:
            return None  # expired, not yet swept
        return job

    async def save_answer(self, job_id: str, answer: StoredAnswer) -> None:
        await self.kv.put(_ANSWER + job_id, {"items": answer.items, "meta": answer.meta, "headers": answer.headers})

    async def load_answer(self, job_id: str) -> StoredAnswer | None:
        value = await self.kv.get(_ANSWER + job_id)
        if value is None:
            return None
        return StoredAnswer(tuple((bytes(d), m) for d, m in value["items"]), value["meta"], value["headers"])

    async def request_cancel(self, job_id: str) -> None:
        await self.kv.put(_CANCEL + job_id, time.time())

    async def cancel_requested(self, job_id: str) -> bool:
        return await self.kv.get(_CANCEL + job_id) is not None

    async def drop(self, job_id: str) -> None:
        for prefix in (_JOB, _ANSWER, _CANCEL):
            await self.kv.pop(prefix + job_id)

    async def sweep(self) -> int:
        """Drops expired jobs, then the oldest ended ones past max_jobs; at most once per sweep_every_s (a Modal
        Dict's keys are listed over the network). Returns how many were dropped."""
        now = time.time()
        if now - self._swept < self.sweep_every_s:
            return 0
        self._swept = now
        ended: list[tuple[float, str]] = []
        count, dropped = 0, 0
        async for key in self.kv.keys():
            if not key.startswith(_JOB):
                continue
            record = await self.kv.get(key)
            if record is None:
                continue
            count += 1
            job = Job.of_record(record)
            if job.ended_at is None:
                continue
            if now - job.ended_at > self.retention_s:
                await self.drop(job.id)
                count, dropped = count - 1, dropped + 1
            else:
                ended.append((job.ended_at, job.id))
        for _, job_id in sorted(ended)[: max(0, count - self.max_jobs)]:
            await self.drop(job_id)
            dropped += 1
        return dropped


def store_of(url: str, retention_s: float, max_jobs: int) -> JobStore:
    """RYLA_JOB_STORE: "local" (this process's memory) or "modal-dict:<name>"."""
    if url == "local":
        return JobStore(LocalKeyValue(), retention_s, max_jobs, sweep_every_s=0.0)
    kind, _, name = url.partition(":")
    if kind == "modal-dict" and name:
        return JobStore(ModalDictKeyValue(name), retention_s, max_jobs)
    raise ValueError(f"RYLA_JOB_STORE {url!r}: expected 'local' or 'modal-dict:<name>'")
