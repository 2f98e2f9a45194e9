"""Load and faults against a running API: N concurrent clients send M requests in all; every answer is recorded
(status, latency, retries), and nothing may be lost or hang. Optionally a fault during the load: tritonserver
killed (the stack must answer 503 at once and 200 again by itself), or a client that walks away mid-generation
(the next request must not wait for the abandoned one).

    python -m perf.soak --url http://127.0.0.1:8080 --clients 32 --requests 300 --out perf/results/cpu
    python -m perf.soak ... --honour-retry-after          # clients wait Retry-After on 429/503 and try again
    python -m perf.soak ... --kill-triton-after 3         # SIGKILL the tritonserver serving --triton-port
    python -m perf.soak --walk-away /qwen-image-2512 /qwen-image-2512-fast   # cancellation: the next one's wait

Writes <out>/soak_<name>.csv (one row per request) and <out>/soak_<name>.md (the summary), and a plot when
matplotlib is installed. Start the stack first (`make serve GROUPS=flux`); the tiny stack is what `make test` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from api.samples import sample_body
from registry import ROUTES
from stack.supervise import port_holders


@dataclass
class Answer:
    index: int
    client: int
    start_s: float  # since the load began
    end_s: float
    status: int  # 0: no HTTP answer (connection error or the client's timeout: a lost or hung request)
    attempts: int
    error: str = ""

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Soak:
    answers: list[Answer]
    wall_s: float
    origin: float  # perf_counter() when the load began
    attempts: list[tuple[float, float, int]] = field(default_factory=list)  # every try: (sent, answered, status)
    fault_at_s: float | None = None
    notes: dict[str, object] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        final = [a.status for a in self.answers]
        latencies = sorted(a.latency_s for a in self.answers if a.status == 200)

        def pct(p: float) -> float:
            return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else float("nan")

        out: dict[str, object] = {
            "requests": len(self.answers),
            "wall_s": round(self.wall_s, 2),
            "by_status": {str(s): final.count(s) for s in sorted(set(final))},
            "lost_or_hung": final.count(0),
            "share_429": round(final.count(429) / max(len(final), 1), 3),
            "p50_s": round(pct(0.50), 3),
            "p99_s": round(pct(0.99), 3),
            "mean_attempts": round(statistics.mean(a.attempts for a in self.answers), 2) if self.answers else 0,
        }
        if self.fault_at_s is not None:
            fault = self.fault_at_s
            first_503 = min(
                (end for sent, end, status in self.attempts if status == 503 and end >= fault), default=None
            )
            # Recovered: the first 200 to a try sent after the fault.
            first_200 = min(
                (end for sent, end, status in self.attempts if status == 200 and sent >= fault), default=None
            )
            out["tries_503"] = sum(1 for *_, status in self.attempts if status == 503)
            out["fault_at_s"] = round(self.fault_at_s, 3)
            out["first_503_after_fault_s"] = None if first_503 is None else round(first_503 - self.fault_at_s, 3)
            out["first_200_after_fault_s"] = None if first_200 is None else round(first_200 - self.fault_at_s, 3)
        return out | self.notes


async def run_load(
    url: str,
    route: str,
    clients: int,
    requests: int,
    honour_retry_after: bool = False,
    timeout_s: float = 60.0,
    max_attempts: int = 50,
) -> Soak:
    """`requests` POSTs of the route's smallest sample spread over `clients` concurrent connections."""
    r = ROUTES[route]
    body = sample_body(r, steps=r.limits.min_steps, size=r.limits.min_size, seed=None)
    answers: list[Answer] = []
    tries: list[tuple[float, float, int]] = []
    issued = 0
    t0 = time.perf_counter()

    async def client(cid: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < requests:
            index, issued = issued, issued + 1
            start = time.perf_counter() - t0
            status, attempts, error = 0, 0, ""
            while attempts < max_attempts:
                attempts += 1
                sent = time.perf_counter() - t0
                try:
                    resp = await http.post(route, json=body)
                    status, error = resp.status_code, ""
                except httpx.HTTPError as exc:  # a timeout here is a hung request
                    status, error = 0, type(exc).__name__
                tries.append((sent, time.perf_counter() - t0, status))
                if not honour_retry_after or status not in (429, 503):
                    break
                await asyncio.sleep(float(resp.headers.get("retry-after", "1")))
            answers.append(Answer(index, cid, start, time.perf_counter() - t0, status, attempts, error))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return Soak(sorted(answers, key=lambda a: a.index), time.perf_counter() - t0, t0, sorted(tries))


async def kill_after(seconds: float, port: int, fault: asyncio.Future) -> None:
    await asyncio.sleep(seconds)
    holders = port_holders(port)
    if not holders:
        raise RuntimeError(f"no process of ours listens on port {port}: is tritonserver there?")
    os.kill(holders[0].pid, signal.SIGKILL)
    fault.set_result(time.perf_counter())


def leave_mid_request(url: str, route: str, body: dict, after_s: float) -> None:
    """POSTs `body` to `route` and closes the connection `after_s` later, before any answer: a client that left."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        head = f"POST {route} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        s.sendall(head.encode() + f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
        time.sleep(after_s)


def walk_away(url: str, slow: str, fast: str, slow_size: int, slow_steps: int, after_s: float) -> dict[str, float]:
    """A client sends a long generation to `slow` and disconnects `after_s` into it; then a request to `fast` (the
    same pipeline model) is timed, against the same request on an idle stack. Without cancellation it would wait
    for the rest of the abandoned generation."""

    def timed(route: str, steps: int, size: int) -> float:
        r = ROUTES[route]
        t0 = time.perf_counter()
        resp = httpx.post(f"{url}{route}", json=sample_body(r, steps=steps, size=size, seed=1), timeout=600)
        resp.raise_for_status()
        return time.perf_counter() - t0

    fast_route = ROUTES[fast]
    fast_steps, fast_size = fast_route.limits.min_steps, fast_route.limits.min_size
    alone = timed(fast, fast_steps, fast_size)
    whole = timed(slow, slow_steps, slow_size)
    leave_mid_request(url, slow, sample_body(ROUTES[slow], steps=slow_steps, size=slow_size, seed=2), after_s)
    after = timed(fast, fast_steps, fast_size)
    return {
        "abandoned_generation_s": round(whole, 3),
        "left_after_s": after_s,
        "next_request_idle_s": round(alone, 3),
        "next_request_after_walk_away_s": round(after, 3),
        "remaining_without_cancellation_s": round(max(whole - after_s, 0.0), 3),
    }


def write(soak: Soak, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"soak_{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*asdict(soak.answers[0]), "latency_s"])
        writer.writeheader()
        writer.writerows({**asdict(a), "latency_s": round(a.latency_s, 4)} for a in soak.answers)
    with (out / f"soak_{name}_tries.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sent_s", "answered_s", "status"])
        writer.writerows((round(a, 4), round(b, 4), status) for a, b, status in soak.attempts)
    summary = soak.summary()
    (out / f"soak_{name}.md").write_text(
        f"# soak {name}\n\n| key | value |\n|---|---|\n"
        + "".join(f"| {k} | {json.dumps(v)} |\n" for k, v in summary.items())
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[soak] matplotlib missing: no plot", flush=True)
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for status in sorted({t[2] for t in soak.attempts}):  # every try, so the 429s and 503s a retry hid show too
        tries = [t for t in soak.attempts if t[2] == status]
        ax.scatter([t[1] for t in tries], [t[1] - t[0] for t in tries], s=6, label=str(status))
    if soak.fault_at_s is not None:
        ax.axvline(soak.fault_at_s, color="red", linestyle="--", label="tritonserver killed")
    ax.set_xlabel("seconds since the load began (answer time)")
    ax.set_ylabel("seconds per try")
    ax.legend(title="status")
    ax.set_title(f"soak {name}")
    fig.tight_layout()
    fig.savefig(out / f"soak_{name}.png", dpi=110)


async def _main(args: argparse.Namespace) -> Soak:
    fault = None
    killer = None
    if args.kill_triton_after is not None:
        fault = asyncio.get_running_loop().create_future()
        killer = asyncio.ensure_future(kill_after(args.kill_triton_after, args.triton_port, fault))
    soak = await run_load(args.url, args.route, args.clients, args.requests, args.honour_retry_after, args.timeout)
    if killer is not None and fault is not None:
        await killer
        soak.fault_at_s = fault.result() - soak.origin
    return soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.soak", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--route", default="/flux", choices=sorted(ROUTES))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--honour-retry-after", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0, help="a request without an answer by then is hung")
    parser.add_argument("--kill-triton-after", type=float, default=None, help="seconds into the load")
    parser.add_argument("--triton-port", type=int, default=8001, help="a port tritonserver listens on")
    parser.add_argument(
        "--walk-away",
        nargs=2,
        metavar=("SLOW", "FAST"),
        help="instead of the load: a client leaves a long SLOW generation mid-way, then FAST is timed",
    )
    parser.add_argument("--walk-away-size", type=int, default=512)
    parser.add_argument("--walk-away-steps", type=int, default=60)
    parser.add_argument("--walk-away-after", type=float, default=1.0)
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=Path("perf/results/cpu"))
    args = parser.parse_args(argv)
    host = args.url.split("://", 1)[-1].split(":")[0].split("/")[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the soak sends traffic to this machine's stack only (127.0.0.1)")
    name = args.name or "_".join(
        filter(
            None,
            (
                f"c{args.clients}_n{args.requests}",
                "retry" if args.honour_retry_after else "",
                "kill_triton" if args.kill_triton_after is not None else "",
            ),
        )
    )
    if args.walk_away:
        slow, fast = args.walk_away
        probe = walk_away(args.url, slow, fast, args.walk_away_size, args.walk_away_steps, args.walk_away_after)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "soak_walk_away.md").write_text(
            f"# a client walks away from {slow} ({args.walk_away_size}², {args.walk_away_steps} steps); then {fast}\n\n"
            "| key | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in probe.items())
        )
        print(json.dumps(probe, indent=1), flush=True)
        return 0
    soak = asyncio.run(_main(args))
    write(soak, args.out, name)
    print(json.dumps(soak.summary(), indent=1), flush=True)
    return 0 if soak.summary()["lost_or_hung"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
