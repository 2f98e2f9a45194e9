"""Cancellation reaches the denoising loop, through the whole stack (HTTP -> api/ -> a real Triton -> the real
pipeline model): a client that leaves mid-generation, and a generation past its route's limit, free the pipeline
model within about one denoising step; the next request does not wait out the abandoned one's remaining steps."""

from __future__ import annotations

import re
import time

import httpx

from api.samples import sample_body
from perf.soak import leave_mid_request
from registry import ROUTES

from .stack_fixtures import running_api

SLOW = ROUTES["/qwen-image-2512"]  # one pipeline model serves both routes, so the fast one waits for the slow
FAST = ROUTES["/qwen-image-2512-fast"]
# Sizes at which a tiny step is long enough to tell on 2 cores (~0.1 s at 512²) and the other answer is quick.
SLOW_SIZE, FAST_SIZE, SLOW_STEPS = 512, FAST.limits.min_size, 60


def body(route, steps: int) -> dict:
    return sample_body(route, steps=steps, size=SLOW_SIZE if route is SLOW else FAST_SIZE, seed=3)


def pipeline_s(client: httpx.Client, route, steps: int) -> float:
    r = client.post(route.path, json=body(route, steps))
    assert r.status_code == 200, r.text
    return float(re.search(r"pipeline;dur=([\d.]+)", r.headers["server-timing"]).group(1)) / 1000


def step_s(client: httpx.Client) -> float:
    """One denoising step of the slow route, from two step counts (the fixed costs cancel), once it is warm (a
    session's first request at this size is slower, which would shrink the difference)."""
    pipeline_s(client, SLOW, 4)
    few, more = pipeline_s(client, SLOW, 4), pipeline_s(client, SLOW, 12)
    return max((more - few) / 8, 0.0)


def fast_answer_s(client: httpx.Client) -> float:
    t0 = time.monotonic()
    r = client.post(FAST.path, json=body(FAST, 2))
    assert r.status_code == 200, r.text
    return time.monotonic() - t0


def cancelled_count(client: httpx.Client, status: str) -> float:
    pattern = rf'ryla_requests_total{{route="{SLOW.path}",status="{status}"}} ([\d.e+]+)'
    found = re.search(pattern, client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_leaves_frees_the_model_within_a_step(client: httpx.Client, api_url: str) -> None:
    step, alone = step_s(client), fast_answer_s(client)
    steps = SLOW_STEPS
    before = cancelled_count(client, "499")
    # Left mid-generation: its text encoding done, a few of its steps run.
    leave_mid_request(api_url, SLOW.path, body(SLOW, steps), after_s=0.5 + 5 * step)
    # The client has gone; had its generation gone on, the next would wait for ~all of its steps.
    waited = fast_answer_s(client)
    assert waited < alone + 3 * step + 0.5, (waited, alone, step, steps)
    assert steps * step > 3 * (waited - alone)  # the test could tell: the abandoned rest is far longer
    assert cancelled_count(client, "499") == before + 1  # counted as cancelled, never as a 200


def test_a_generation_past_its_limit_is_504_and_frees_the_model(client: httpx.Client, triton) -> None:
    step, alone = step_s(client), fast_answer_s(client)
    limit_s = 1.0
    with running_api(triton.grpc_url, RYLA_GENERATION_TIMEOUT_S=str(limit_s)) as url:
        t0 = time.monotonic()
        r = httpx.post(f"{url}{SLOW.path}", json=body(SLOW, SLOW_STEPS), timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
        assert time.monotonic() - t0 < limit_s + 1.5
    waited = fast_answer_s(client)
    assert waited < alone + 3 * step + 0.5, (waited, alone, step)
