"""Admission control holds at both layers with one bound: the API's group gate (in flight + queued, then 429) and
the pipeline model's queue policy in Triton (the same bound, from the registry), so a client that calls Triton
directly cannot pile work up either; the API answers Triton's refusal as 429 `busy` with Retry-After."""

from __future__ import annotations

import asyncio
import re

from api.errors import ApiError
from api.triton_client import TritonBackend
from model_repository.config import admission, pipeline_config
from perf.perf_analyzer import request_values
from registry import FAMILIES, GROUPS, ROUTES, pipeline_model_of, task_of

PATH = "/flux"
ROUTE = ROUTES[PATH]


def test_the_queue_policy_is_the_groups_bound() -> None:
    for family in FAMILIES.values():
        for pipeline in family.pipelines:
            routes = [r for p, r in ROUTES.items() if pipeline_model_of(p) == pipeline.triton_model]
            bound, timeout_s = admission(pipeline)
            groups = {GROUPS[r.group] for r in routes}
            assert bound == sum(g.max_concurrency + g.max_queue for g in groups)
            assert timeout_s == max(r.timeout_s for r in routes)
            text = pipeline_config(family, pipeline, "cpu", {})
            found = re.search(
                r"default_queue_policy \{ max_queue_size: (\d+) default_timeout_microseconds: (\d+)", text
            )
            assert found and (int(found[1]), int(found[2])) == (bound, int(timeout_s * 1e6))


async def test_triton_refuses_past_the_bound_and_the_api_says_busy(triton) -> None:
    pipeline = pipeline_model_of(PATH)
    bound, _ = admission(next(p for f in FAMILIES.values() for p in f.pipelines if p.triton_model == pipeline))
    backend = TritonBackend(triton.grpc_url, retry_after_s=3, probe_timeout_s=2)
    values = request_values(PATH, size=ROUTE.limits.min_size, steps=12)

    async def one() -> int:
        try:
            await backend.infer(pipeline, task_of(ROUTE), values, timeout_s=120)
            return 200
        except ApiError as exc:
            assert exc.status != 429 or exc.headers["Retry-After"] == "3"
            return exc.status

    try:
        statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(bound + 4))), 120)
    finally:
        await backend.close()
    # One executes and `bound` wait; those sent beyond while none has finished are refused, never lost.
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= bound, statuses
