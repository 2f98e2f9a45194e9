"""Admission control: the API's group gate bounds what reaches Triton (in flight + queued, then 429 `busy` with
Retry-After), through the whole stack. Triton's own queue carries no policy: the pipeline models are decoupled, and
the dynamic batcher that held the policy delays a request that arrives while the instance is busy by its 500 ms
wait (perf/results/cpu/jobs_cancel.md), so the gate, Triton's only client, is the one bound."""

from __future__ import annotations

import asyncio

import httpx

from api.samples import sample_body
from model_repository.config import pipeline_config
from registry import FAMILIES, GROUPS, ROUTES

PATH = "/flux"
ROUTE = ROUTES[PATH]


def test_pipeline_models_are_decoupled_without_a_batcher() -> None:
    for family in FAMILIES.values():
        for pipeline in family.pipelines:
            for profile in ("cpu", "gpu"):
                text = pipeline_config(family, pipeline, profile, {})
                assert "decoupled: true" in text and "dynamic_batching" not in text, pipeline.triton_model


async def test_past_the_groups_bound_the_api_says_busy_and_loses_nothing(api_url: str) -> None:
    group = GROUPS[ROUTE.group]
    bound = group.max_concurrency + group.max_queue
    body = sample_body(ROUTE, steps=12, size=ROUTE.limits.min_size)
    async with httpx.AsyncClient(base_url=api_url, timeout=120) as client:
        answers = await asyncio.wait_for(asyncio.gather(*(client.post(PATH, json=body) for _ in range(bound + 4))), 120)
    statuses = [a.status_code for a in answers]
    # `bound` are admitted (in flight or queued); those sent beyond while none has finished are refused, never lost.
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= bound, statuses
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.json()["error"]["code"] == "busy" and int(busy.headers["retry-after"]) > 0
