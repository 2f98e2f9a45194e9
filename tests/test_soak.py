"""perf/soak.py's load, bounded for make test, through the whole tiny stack: more concurrent clients than the
group admits, every request answered (200, or 429 with Retry-After), none lost or hung; clients that honour
Retry-After all get their image. (The longer runs and the fault runs: `python -m perf.soak`, perf/results/cpu.)"""

from __future__ import annotations

import asyncio

from perf.soak import run_load
from registry import GROUPS, ROUTES

from .stack_fixtures import running_api

ROUTE = "/flux"
GROUP = GROUPS[ROUTES[ROUTE].group]
CLIENTS = GROUP.max_concurrency + GROUP.max_queue + 4  # some must be refused


def test_more_clients_than_admitted_get_200_or_429_and_none_is_lost(api_url: str) -> None:
    soak = asyncio.run(asyncio.wait_for(run_load(api_url, ROUTE, CLIENTS, 40, timeout_s=60), 240))
    summary = soak.summary()
    assert len(soak.answers) == 40 and summary["lost_or_hung"] == 0, summary
    assert set(summary["by_status"]) <= {"200", "429"}, summary
    assert summary["by_status"].get("429", 0) > 0 and summary["by_status"].get("200", 0) > 0, summary


def test_clients_that_honour_retry_after_all_get_their_image(triton) -> None:
    with running_api(triton.grpc_url, RYLA_GROUPS=GROUP.name, RYLA_RETRY_AFTER_S="1") as url:
        load = run_load(url, ROUTE, CLIENTS, 30, honour_retry_after=True, timeout_s=60)
        soak = asyncio.run(asyncio.wait_for(load, 240))
    summary = soak.summary()
    assert summary["by_status"] == {"200": 30}, summary
    assert summary["mean_attempts"] > 1  # some were refused first and came back
