"""/v1/jobs/{id}: a job's status, its result, and its cancellation (api.md, "Jobs")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .answer import RESPONSE_HEADERS, json_document, response_of
from .auth import DOCUMENTED_SCHEMES
from .errors import ApiError, openapi_responses
from .job_store import Job, JobStatus
from .jobs import status_document
from .state import ApiState, State

JOB_PATH_PREFIX = "/v1/jobs/"


async def _job(request: Request, state: ApiState, job_id: str) -> Job:
    """The job, for the key that made it only: another key's job is as unknown as a missing one."""
    job = await state.job_store.load(job_id)
    if job is None or job.owner != state.keys.owner(dict(request.headers.raw)):
        raise ApiError(404, f"no job {job_id!r} (unknown, expired, or made with another API key)")
    return job


def build_job_router(protected: bool) -> APIRouter:
    router = APIRouter(
        prefix="/v1/jobs",
        tags=["jobs"],
        dependencies=DOCUMENTED_SCHEMES if protected else None,
        responses=openapi_responses(*((401,) if protected else ()), 404, 422),
    )

    @router.get("/{job_id}")
    async def job_status(job_id: str, request: Request, state: State) -> dict[str, Any]:
        """The job's status and progress (step i of n); once it succeeded, `result`: the JSON answer of the
        synchronous call."""
        job = await _job(request, state, job_id)
        result = None
        if job.status is JobStatus.SUCCEEDED:
            answer = await state.job_store.load_answer(job.id)
            result = None if answer is None else await run_in_threadpool(json_document, answer)
        return status_document(job, result)

    @router.get(
        "/{job_id}/result",
        response_class=Response,
        responses={
            200: {
                "description": "The answer exactly as the synchronous call gives it: bytes and cost headers, or JSON",
                "headers": {n: {"description": t, "schema": {"type": "string"}} for n, t in RESPONSE_HEADERS.items()},
            },
            **openapi_responses(409),
        },
    )
    async def job_result(job_id: str, request: Request, state: State) -> Response:
        """The succeeded job's answer; a failed job's error with its status; 409 while it has not ended."""
        job = await _job(request, state, job_id)
        if not job.status.ended:
            progress = f"step {job.step} of {job.steps}"
            raise ApiError(409, f"job {job_id} is {job.status} ({progress}); its result is not ready")
        if job.status is JobStatus.CANCELLED:
            raise ApiError(409, f"job {job_id} was cancelled; it has no result")
        if job.status is JobStatus.FAILED:
            error = job.error or {}
            raise ApiError(job.error_status or 500, error.get("message", "the job failed"), field=error.get("field"))
        answer = await state.job_store.load_answer(job.id)
        if answer is None:
            raise ApiError(404, f"the result of job {job_id} has expired")
        return await run_in_threadpool(response_of, answer, job.as_json)

    @router.delete("/{job_id}", status_code=200, responses={202: {"description": "cancelling (another container)"}})
    async def cancel_job(job_id: str, request: Request, state: State) -> JSONResponse:
        """Cancels the job: its work stops within one denoising step. 200 with the job ended; 202 while the
        container that runs it has yet to see the cancel."""
        job = await state.jobs.cancel(await _job(request, state, job_id))
        return JSONResponse(status_document(job), status_code=200 if job.status.ended else 202)

    return router
