"""Jobs (api.md, "Jobs"): `Prefer: respond-async` answers 202 at once; the job reports the denoising loop's progress
from the real pipeline model (decoupled Triton responses), its result is the synchronous answer, a cancel frees the
model within a step, a job past its limit fails 504, and only the key that made a job can see it."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.job_store import Job, JobStatus, JobStore, LocalKeyValue, StoredAnswer
from api.jobs import JobRunner
from api.samples import sample_body
from api.settings import Settings
from registry import ROUTES

from .stack_fixtures import running_api
from .test_cancellation import FAST, SLOW, SLOW_STEPS, body, fast_answer_s, step_s

ASYNC = {"Prefer": "respond-async"}
FLUX = ROUTES["/flux"]


class RecordingKeyValue(LocalKeyValue):
    """The local store, keeping every job record written to it: what a reader of the store could have seen."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[dict] = []

    async def put(self, key: str, value: object) -> None:
        if key.startswith("job:"):
            self.writes.append(dict(value))  # type: ignore[arg-type]
        await super().put(key, value)


def ended(r: httpx.Response) -> dict | None:
    assert r.status_code == 200, r.text
    return r.json() if JobStatus(r.json()["status"]).ended else None


async def wait_for_end(client: httpx.AsyncClient, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := ended(await client.get(f"/v1/jobs/{job_id}"))) is None:
        assert time.monotonic() < deadline, f"job {job_id} did not end in {timeout_s} s"
        await asyncio.sleep(0.05)
    return status


def wait_for_end_sync(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while (status := ended(client.get(f"/v1/jobs/{job_id}"))) is None:
        assert time.monotonic() < deadline, f"job {job_id} did not end in {timeout_s} s"
        time.sleep(0.05)
    return status


@pytest.fixture()
async def in_process(triton) -> AsyncIterator[tuple[httpx.AsyncClient, RecordingKeyValue]]:
    """The real app in this process (so its job store can be read), against the real Triton."""
    app = create_app(Settings(triton_grpc_url=triton.grpc_url, groups=("flux",)))
    kv = RecordingKeyValue()
    app.state.api.job_store.kv = kv
    app.state.api.backend()  # the gRPC channel of this event loop, as the lifespan makes it (not run by ASGITransport)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://jobs.test", timeout=120) as client:
        try:
            yield client, kv
        finally:
            await app.state.api.close()


async def test_a_job_reports_every_step_and_its_result_is_the_synchronous_answer(in_process) -> None:
    client, kv = in_process
    steps = 4
    request = sample_body(FLUX, steps=steps, size=FLUX.limits.min_size, seed=11)
    r = await client.post(FLUX.path, json=request, headers=ASYNC)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert set(accepted) == {"id", "status_url", "result_url"}
    assert r.headers["location"] == accepted["status_url"] == f"/v1/jobs/{accepted['id']}"
    assert r.headers["preference-applied"] == "respond-async"
    status = await wait_for_end(client, accepted["id"])
    assert status["status"] == "succeeded" and status["progress"] == {"step": steps, "steps": steps}, status

    # What the store saw, in order: queued, running, then each denoising step once, then the end.
    seen = [(w["status"], w["step"]) for w in kv.writes if w["id"] == accepted["id"]]
    assert seen[0] == ("queued", 0) and seen[-1] == ("succeeded", steps), seen
    running_steps = [step for state, step in seen if state == "running" and step > 0]
    assert sorted(set(running_steps)) == list(range(1, steps + 1)) and running_steps == sorted(running_steps), seen

    raw = await client.get(accepted["result_url"])
    sync = await client.post(FLUX.path, json=request)
    assert raw.status_code == sync.status_code == 200, (raw.text, sync.text)
    assert raw.content == sync.content and raw.headers["content-type"] == sync.headers["content-type"] == "image/png"
    for header in ("x-seed", "x-model", "x-gpu-type"):
        assert raw.headers[header] == sync.headers[header], header
    assert float(raw.headers["x-cost-usd"]) >= 0 and float(raw.headers["x-execution-time-sec"]) > 0
    # The status document carries the synchronous call's JSON answer.
    result = status["result"]
    assert result["seed"] == 11 and result["route"] == FLUX.path and result["images"][0]["mime_type"] == "image/png"
    assert base64.b64decode(result["images"][0]["data"]) == sync.content


async def test_a_bad_body_is_refused_before_any_job_is_made(in_process) -> None:
    client, kv = in_process
    r = await client.post(FLUX.path, json={"prompt": "a fox", "steps": 0}, headers=ASYNC)
    assert r.status_code == 422 and r.json()["error"]["field"] == "steps", r.text
    r = await client.post(FLUX.path, json={"prompt": "a fox", "num_images": 2}, headers=ASYNC)
    assert r.status_code == 422 and r.json()["error"]["field"] == "num_images", r.text  # raw bytes hold one image
    assert kv.writes == []
    missing = await client.get("/v1/jobs/0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert (await client.get("/v1/jobs/0123456789abcdef/result")).status_code == 404
    assert (await client.delete("/v1/jobs/0123456789abcdef")).status_code == 404


def test_cancelling_a_running_job_frees_the_model_within_a_step(client: httpx.Client) -> None:
    alone = fast_answer_s(client)
    r = client.post(SLOW.path, json=body(SLOW, SLOW_STEPS), headers=ASYNC)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    def reached(step: int) -> tuple[float, dict]:
        deadline = time.monotonic() + 120
        while (status := client.get(f"/v1/jobs/{job_id}").json())["progress"]["step"] < step:
            assert time.monotonic() < deadline and status["status"] in ("queued", "running"), status
            time.sleep(0.01)
        return time.monotonic(), status

    # A step's time as this very job runs it (under whatever else loads the machine), from its own progress.
    t1, _ = reached(1)
    t4, status = reached(4)
    step = (t4 - t1) / (status["progress"]["step"] - 1)
    assert status["progress"]["steps"] == SLOW_STEPS and status["status"] == "running"
    early = client.get(f"/v1/jobs/{job_id}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_ready", early.text
    cancelled = client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    # The model is free: the next request does not wait for the cancelled job's remaining steps.
    waited = fast_answer_s(client)
    assert waited < alone + 3 * step + 0.5, (waited, alone, step)
    assert SLOW_STEPS * step > 3 * (waited - alone)  # the test could tell: the rest of the job is far longer
    after = client.get(f"/v1/jobs/{job_id}").json()
    assert after["status"] == "cancelled" and after["progress"]["step"] < SLOW_STEPS, after
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409


def test_a_job_past_its_limit_fails_504_and_frees_the_model(client: httpx.Client, triton) -> None:
    step, alone = step_s(client), fast_answer_s(client)
    with running_api(triton.grpc_url, RYLA_GENERATION_TIMEOUT_S="1.0") as url, httpx.Client(base_url=url) as other:
        r = other.post(SLOW.path, json=body(SLOW, SLOW_STEPS), headers=ASYNC)
        assert r.status_code == 202, r.text
        status = wait_for_end_sync(other, r.json()["id"], timeout_s=30)
        assert status["status"] == "failed" and status["error"]["code"] == "timeout", status
        result = other.get(r.json()["result_url"])
        assert result.status_code == 504 and result.json()["error"]["code"] == "timeout", result.text
    waited = fast_answer_s(client)
    assert waited < alone + 3 * step + 0.5, (waited, alone, step)


def test_only_the_key_that_made_a_job_sees_it(triton) -> None:
    with running_api(triton.grpc_url, RYLA_API_KEYS="key-a,key-b") as url, httpx.Client(base_url=url) as client:
        a, b = {"X-API-Key": "key-a"}, {"Authorization": "Bearer key-b"}
        request = sample_body(FAST, steps=1, size=FAST.limits.min_size, seed=2)
        r = client.post(FAST.path, json=request, headers={**ASYNC, **a})
        assert r.status_code == 202, r.text
        job = r.json()["status_url"]
        assert client.get(job).status_code == 401
        assert client.get(job, headers=b).status_code == 404  # another key's job is not there at all
        assert client.delete(job, headers=b).status_code == 404
        assert client.get(job, headers=a).status_code == 200


async def test_a_cancel_through_another_container_reaches_the_one_that_runs_the_job() -> None:
    # Two runners over one store stand for two containers of a group sharing a Modal Dict.
    store = JobStore(LocalKeyValue(), retention_s=60, max_jobs=10, sweep_every_s=0)
    here, there = JobRunner(store, cancel_poll_s=0.05), JobRunner(store, cancel_poll_s=0.05)
    steps_done: list[int] = []

    async def work(progress, started) -> StoredAnswer:  # noqa: ANN001
        started()
        for step in range(1, 1000):
            await asyncio.sleep(0.01)
            progress(step, 999)
            steps_done.append(step)
        raise AssertionError("never cancelled")

    job = await here.submit("/flux", owner="", as_json=False, work=work)
    while not steps_done:
        await asyncio.sleep(0.01)
    assert await there.cancel(await store.load(job.id)) is not None  # not its task: it leaves the mark
    deadline = time.monotonic() + 5
    while not (await store.load(job.id)).status.ended:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    ended = await store.load(job.id)
    assert ended.status is JobStatus.CANCELLED and 0 < ended.step < 999
    await here.close()


async def test_ended_jobs_expire_and_the_oldest_go_first() -> None:
    store = JobStore(LocalKeyValue(), retention_s=60, max_jobs=2, sweep_every_s=0)
    now = time.time()
    for i, ended in enumerate([now - 120, now - 30, now - 20, now - 10, None]):  # the first has expired
        job = Job(id=f"j{i}", route="/flux", owner="", as_json=False, status=JobStatus.QUEUED)
        if ended is not None:
            job = Job(**{**job.to_record(), "status": JobStatus.SUCCEEDED, "ended_at": ended})
        await store.save(job)
    assert await store.load("j0") is None  # expired: gone for readers before any sweep
    # j0 expired; then, of the four left, the two oldest ended ones, to keep max_jobs; a running job stays.
    assert await store.sweep() == 3
    assert [await store.load(f"j{i}") is not None for i in range(5)] == [False, False, False, True, True]
