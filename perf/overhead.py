"""What the stack adds to a generation, from the API's own Server-Timing header: sequential requests to a running
API, each answer's parts (queue, Triton round trip, pipeline inside Triton, encode, the API's own work) and the
client's round trip, as p50 / p99 per route.

    python -m perf.overhead --url http://127.0.0.1:8080 --routes /flux,/z-image --requests 60 --out perf/results/cpu

"overhead" is what a request costs beyond its pipeline and its image encode: the client's round trip minus the
pipeline's time inside Triton minus the encode (issue 17: goal 5 ms). Its parts: "transport" (the Triton round trip
minus the pipeline: gRPC, the stub's queues, tensor copies), "api" (validation, media decode, bookkeeping) and "http"
(the client's round trip minus the server's total: the connection, the body's transfer). Writes
<out>/overhead.csv (one row per request) and <out>/overhead.md. Start the stack first (`make serve`).
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

PARTS = ("queue", "triton", "pipeline", "encode", "api", "total")


def server_timing(header: str) -> dict[str, float]:
    """Server-Timing's durations in seconds, by name."""
    return {m[1]: float(m[2]) / 1000 for m in re.finditer(r"(\w+);dur=([\d.]+)", header)}


def measure(client: httpx.Client, route: str, size: int, steps: int, fmt: str) -> dict[str, float]:
    body = sample_body(ROUTES[route], steps=steps, size=size, seed=1) | {"output_format": fmt}
    t0 = time.perf_counter()
    r = client.post(route, json=body)
    client_s = time.perf_counter() - t0
    r.raise_for_status()
    t = server_timing(r.headers["server-timing"])
    return {
        **{p: t[p] for p in PARTS},
        "client": client_s,
        "transport": t["triton"] - t["pipeline"],
        "http": client_s - t["total"],
        "overhead": client_s - t["pipeline"] - t["encode"],
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--routes", default="/flux", help="comma-separated routes")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per route, after 3 warm-ups")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--format", default="png", help="output_format of every request")
    parser.add_argument("--key", default="", help="API key, if the stack has keys")
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    args = parser.parse_args(argv)
    headers = {"authorization": f"Bearer {args.key}"} if args.key else {}
    rows: list[dict[str, object]] = []
    with httpx.Client(base_url=args.url, timeout=120, headers=headers) as client:
        for route in args.routes.split(","):
            steps = ROUTES[route].limits.min_steps
            for _ in range(3):
                measure(client, route, args.size, steps, args.format)
            for i in range(args.requests):
                rows.append({"route": route, "request": i, **measure(client, route, args.size, steps, args.format)})
            print(f"{route}: {args.requests} requests done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with (args.out / "overhead.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    shown = ("client", "pipeline", "encode", "overhead", "transport", "api", "http", "queue")
    lines = [
        f"# Stack overhead, {args.requests} sequential requests per route at {args.size}², {args.format}, min steps",
        "",
        f"`python -m perf.overhead --routes {args.routes} --requests {args.requests} --size {args.size}"
        f" --format {args.format}`; ms, p50 / p99.",
        "",
        "| route | " + " | ".join(shown) + " |",
        "|---|" + "---|" * len(shown),
    ]
    for route in args.routes.split(","):
        mine = [r for r in rows if r["route"] == route]
        cells = []
        for part in shown:
            values = [float(r[part]) * 1000 for r in mine]
            cells.append(f"{statistics.median(values):.1f} / {quantile(values, 0.99):.1f}")
        lines.append(f"| {route} | " + " | ".join(cells) + " |")
    (args.out / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
