"""`make serve`: tiny checkpoints, exported components, Triton on 8000/8001/8002, the API on 127.0.0.1:8080.

`--groups flux,...` (`make serve GROUPS=...`) builds and serves only those app groups' routes. It refuses to start
when one of its four ports is taken, naming the process that holds it. A tritonserver or API that dies is restarted
(stack/supervise.py); both die with this process, even on `kill -9`. Ctrl-C (or SIGTERM) stops the API, then Triton
(which unloads its models), and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from api.samples import sample_body
from registry import GROUPS, routes_of

from .build import REPO_ROOT, BuildDirs, build
from .supervise import Supervisor, dies_with_parent, port_problems
from .triton_server import Ports, TritonServer


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass
class ApiProcess:
    """`python -m api` against Triton's gRPC port, as a process a Supervisor restarts."""

    host: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ApiProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "--host", self.host, "--port", str(self.port)],
            env=self.env,
            # Its own session: a terminal's Ctrl-C reaches only this process, which stops the API, then Triton.
            start_new_session=True,
            preexec_fn=dies_with_parent(),
        )
        return self

    def is_ready(self) -> bool:
        """Serving HTTP (/health); whether Triton is up is for /ready and the requests to say."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build-dir", default=str(REPO_ROOT / "build" / "local"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--triton-http-port", type=int, default=8000)
    parser.add_argument("--triton-grpc-port", type=int, default=8001)
    parser.add_argument("--triton-metrics-port", type=int, default=8002)
    parser.add_argument("--groups", default="", help=f"comma-separated app groups (default: all of {sorted(GROUPS)})")
    args = parser.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g] or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown app groups {unknown}; the registry has {sorted(GROUPS)}")
    routes = [r for g in groups for r in routes_of(g)]

    # Before anything is built: a port held by another server (say, an earlier stack's orphan) would otherwise be
    # found only after the build, as a Triton that "is ready" because the other one answers.
    problems = port_problems(
        [
            ("the API, --port", args.host, args.port),
            ("Triton HTTP, --triton-http-port", "127.0.0.1", args.triton_http_port),
            ("Triton gRPC, --triton-grpc-port", "127.0.0.1", args.triton_grpc_port),
            ("Triton metrics, --triton-metrics-port", "127.0.0.1", args.triton_metrics_port),
        ]
    )
    if problems:
        for problem in problems:
            print(f"[serve] {problem}", file=sys.stderr, flush=True)
        print("[serve] not starting: stop that process or choose other ports", file=sys.stderr, flush=True)
        return 2

    # Stop the same way on Ctrl-C and on `kill`, even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    dirs = BuildDirs.under(Path(args.build_dir))
    t0 = time.perf_counter()
    built = build(dirs, checkpoints=list(dict.fromkeys(r.checkpoint for r in routes)))
    print(f"[serve] built in {time.perf_counter() - t0:.1f}s; starting tritonserver", flush=True)

    # Both processes are started from this thread (the main one, which lives as long as the stack) or from their
    # Supervisor's thread: PR_SET_PDEATHSIG fires when the thread that started a child exits.
    triton = TritonServer(
        repository=dirs.repository,
        backends_dir=dirs.backends,
        ports=Ports(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port),
        log_path=Path(args.build_dir) / "tritonserver.log",
        load_models=tuple(built.models),
    ).start()
    env = dict(os.environ, RYLA_TRITON_GRPC_URL=triton.grpc_url, RYLA_GROUPS=",".join(groups))
    env.setdefault("RYLA_LORA_STORE", str(dirs.loras))
    api = ApiProcess(args.host, args.port, env)
    supervisors: list[Supervisor] = []
    try:
        waited = triton.wait_ready()
        print(f"[serve] Triton ready in {waited:.1f}s (log: {triton.log_path})", flush=True)
        api.start()
        # A dead Triton is restarted while the API keeps running: it answers 503 with Retry-After meanwhile and its
        # gRPC channel reconnects by itself. A dead API is restarted too.
        models = triton.served_models()
        supervisors = [
            Supervisor("tritonserver", triton, ready=lambda: triton.is_ready(models)).watch(),
            Supervisor("API", api, ready=api.is_ready).watch(),
        ]
        base = api.url
        route = routes[0]
        body = json.dumps(sample_body(route, size=route.limits.min_size, seed=None))
        print(
            f"[serve] API on {base} (docs: {base}/docs). Try:\n"
            f"  curl -s -X POST {base}{route.path} -H 'content-type: application/json' -d '{body}' -o out.png\n"
            "[serve] Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\n[serve] stopping", flush=True)
        return 0
    finally:
        # The API first, then Triton; each Supervisor stops its process from the thread that may have restarted it.
        for supervisor in reversed(supervisors):
            supervisor.stop()
        api.stop()
        triton.stop()
        print("[serve] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
