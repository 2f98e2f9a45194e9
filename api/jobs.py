"""Running generations as jobs: the work runs in this process as a task, its state goes to the job store.

A job's record is rewritten as it moves (queued, running, step i of n) by one writer per job, so the store sees each
state in order and a slow store (a Modal Dict over the network) never holds up the denoising loop. The same writer
polls the store for a cancel mark, which a DELETE through any container of the group leaves there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from .errors import ApiError, error_detail
from .job_store import Job, JobStatus, JobStore, StoredAnswer

log = logging.getLogger("api.jobs")

# The work of a job: called with (progress(step, steps), started()), answers the stored answer or raises ApiError.
Work = Callable[[Callable[[int, int], None], Callable[[], None]], Awaitable[StoredAnswer]]


class _Tracker:
    """A running job's latest state in memory, and whether the store has seen it yet."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.changed = asyncio.Event()
        self.done = False  # the work has ended: the writer stops after its last write

    def set(self, **changes: Any) -> None:
        self.job = self.job.but(**changes)
        self.changed.set()

    def started(self) -> None:
        self.set(status=JobStatus.RUNNING)

    def progress(self, step: int, steps: int) -> None:
        self.set(status=JobStatus.RUNNING, step=step, steps=steps)


class JobRunner:
    def __init__(self, store: JobStore, cancel_poll_s: float) -> None:
        self.store = store
        self.cancel_poll_s = cancel_poll_s
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closing = False

    async def submit(self, route: str, owner: str, as_json: bool, work: Work) -> Job:
        await self.store.sweep()
        job = Job(id=uuid.uuid4().hex, route=route, owner=owner, as_json=as_json)
        await self.store.save(job)
        tracker = _Tracker(job)
        self.tasks[job.id] = asyncio.create_task(self._run(tracker, work), name=f"job {job.id}")
        return job

    async def _run(self, tracker: _Tracker, work: Work) -> None:
        job_id = tracker.job.id
        task = asyncio.current_task()
        writer = asyncio.create_task(self._write(tracker, task))
        try:
            answer = await work(tracker.progress, tracker.started)
            await self.store.save_answer(job_id, answer)
            tracker.set(status=JobStatus.SUCCEEDED)
        except asyncio.CancelledError:
            if self.closing:  # the server stops: the work is lost, not cancelled by the client
                tracker.set(status=JobStatus.FAILED, **_error(503, "the server restarted during the job; submit again"))
            else:
                tracker.set(status=JobStatus.CANCELLED)
        except ApiError as exc:
            tracker.set(status=JobStatus.FAILED, **_error(exc.status, exc.message, exc.field))
        except Exception:
            log.exception("job %s failed", job_id)
            tracker.set(status=JobStatus.FAILED, **_error(500, f"the job failed (job {job_id})"))
        finally:
            # Stopped by a flag, not cancelled: a cancel that meets the event being set can be lost in wait_for.
            tracker.done = True
            tracker.changed.set()
            await writer
            await self.store.save(tracker.job)  # the end, whatever the writer last wrote
            self.tasks.pop(job_id, None)

    async def _write(self, tracker: _Tracker, task: asyncio.Task[None] | None) -> None:
        """Writes each new state of the job to the store; between writes, looks for a cancel mark."""
        while not tracker.done:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cancel_poll_s):
                    await tracker.changed.wait()
            if tracker.changed.is_set():
                tracker.changed.clear()
                await self.store.save(tracker.job)
            if not tracker.done and task is not None and await self.store.cancel_requested(tracker.job.id):
                task.cancel()
                return

    async def cancel(self, job: Job) -> Job:
        """Stops a job: at once where it runs in this process, else through the store's cancel mark, which the
        container that runs it reads within cancel_poll_s. Answers the job's state after the attempt."""
        if job.status.ended:
            return job
        task = self.tasks.get(job.id)
        if task is None:
            await self.store.request_cancel(job.id)
            return job
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        return await self.store.load(job.id) or job

    async def close(self) -> None:
        self.closing = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _error(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": error_detail(status, message, field), "error_status": status}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_urls(job_id: str) -> dict[str, str]:
    # Relative: right behind any proxy or host name the client reached us by.
    return {"status_url": f"/v1/jobs/{job_id}", "result_url": f"/v1/jobs/{job_id}/result"}


def status_document(job: Job, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET /v1/jobs/{id}: api.md's job document."""
    document: dict[str, Any] = {
        "id": job.id,
        "route": job.route,
        "status": str(job.status),
        "progress": {"step": job.step, "steps": job.steps},
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        **job_urls(job.id),
    }
    if job.error is not None:
        document["error"] = job.error
    if result is not None:
        document["result"] = result
    return document
