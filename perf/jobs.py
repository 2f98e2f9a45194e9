"""Jobs against a running API: how often progress arrives, and how soon a cancelled job frees its model.

Per trial: a long job on SLOW (polled for progress), cancelled once it has run a few steps; then a request to FAST,
which shares SLOW's pipeline model, is timed against the same request on an idle stack. Its extra wait, in SLOW's
steps, is what the cancel left running (goal: at most one step). The step time comes from two step counts of SLOW
in the same run, so fixed costs cancel.

    python -m perf.jobs --url http://127.0.0.1:8080 --trials 5 --out perf/results/cpu

Writes <out>/jobs_cancel.csv (one row per trial) and <out>/jobs_cancel.md. Start the stack first (`make serve`).
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import time
from pathlib import Path

import httpx

from api.samples import sample_body
from registry import ROUTES

ASYNC = {"Prefer": "respond-async"}


def _pipeline_s(client: httpx.Client, route: str, steps: int, size: int) -> float:
    r = client.post(route, json=sample_body(ROUTES[route], steps=steps, size=size, seed=1))
    r.raise_for_status()
    return float(re.search(r"pipeline;dur=([\d.]+)", r.headers["server-timing"]).group(1)) / 1000


def _answer_s(client: httpx.Client, route: str) -> float:
    r = ROUTES[route]
    t0 = time.perf_counter()
    client.post(route, json=sample_body(r, steps=r.limits.min_steps, size=r.limits.min_size, seed=1)).raise_for_status()
    return time.perf_counter() - t0


def trial(client: httpx.Client, slow: str, fast: str, size: int, steps: int, cancel_at: int) -> dict[str, float]:
    _pipeline_s(client, slow, 4, size)  # warm at this size
    step_s = (_pipeline_s(client, slow, 12, size) - _pipeline_s(client, slow, 4, size)) / 8
    alone_s = _answer_s(client, fast)
    job = client.post(slow, json=sample_body(ROUTES[slow], steps=steps, size=size, seed=1), headers=ASYNC)
    job.raise_for_status()
    status_url = job.json()["status_url"]
    seen: dict[int, float] = {}  # step -> when polling first saw it
    polls, deadline = 0, time.monotonic() + 300
    while (status := client.get(status_url).json())["progress"]["step"] < cancel_at:
        if time.monotonic() > deadline:
            raise TimeoutError("the job made no progress in 300 s")
        seen.setdefault(status["progress"]["step"], time.monotonic())
        polls += 1
    step_at_cancel = status["progress"]["step"]
    seen.setdefault(step_at_cancel, time.monotonic())
    first = min(s for s in seen if s > 0)
    job_step_s = (seen[step_at_cancel] - seen[first]) / max(1, step_at_cancel - first)
    t0 = time.perf_counter()
    cancelled = client.delete(status_url)
    cancel_s = time.perf_counter() - t0
    waited_s = _answer_s(client, fast)
    final = client.get(status_url).json()
    return {
        "step_s": step_s,
        "job_step_s": job_step_s,  # the same, from the job's own progress as polling saw it
        "alone_s": alone_s,
        "cancel_answer_s": cancel_s,
        "cancel_status": float(cancelled.status_code),
        "waited_s": waited_s,
        "freed_after_steps": max(0.0, waited_s - alone_s) / step_s if step_s > 0 else float("nan"),
        "step_at_cancel": float(step_at_cancel),
        "last_step": float(final["progress"]["step"]),
        "steps_seen_by_polling": float(len(seen)),
        "polls": float(polls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.jobs", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--slow", default="/qwen-image-2512", choices=sorted(ROUTES))
    parser.add_argument("--fast", default="/qwen-image-2512-fast", choices=sorted(ROUTES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cancel-at", type=int, default=5, help="the step after which the job is cancelled")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("perf/results/cpu"))
    args = parser.parse_args(argv)
    host = args.url.split("://", 1)[-1].split(":")[0].split("/")[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("this benchmark sends traffic to this machine's stack only (127.0.0.1)")
    rows = []
    with httpx.Client(base_url=args.url, timeout=600) as client:
        for i in range(args.trials):
            row = trial(client, args.slow, args.fast, args.size, args.steps, args.cancel_at)
            rows.append(row)
            print(f"[jobs] trial {i + 1}/{args.trials}: freed after {row['freed_after_steps']:.2f} steps", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "jobs_cancel.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    freed = [r["freed_after_steps"] for r in rows]
    step_ms = statistics.median(r["step_s"] for r in rows) * 1000
    (args.out / "jobs_cancel.md").write_text(
        f"# cancelling a job of {args.slow} ({args.size}², {args.steps} steps) after step {args.cancel_at}\n\n"
        f"`python -m perf.jobs --trials {args.trials}` on the tiny stack (`make serve`).\n\n"
        f"| trials | step (median) | model freed after, in steps: median | max | DELETE answered (median) |\n"
        f"|---|---|---|---|---|\n"
        f"| {len(rows)} | {step_ms:.0f} ms | {statistics.median(freed):.2f} | {max(freed):.2f} | "
        f"{statistics.median(r['cancel_answer_s'] for r in rows) * 1000:.0f} ms |\n"
    )
    print((args.out / "jobs_cancel.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
