"""`make serve`: tiny checkpoints, exported components, Triton on 8000/8001/8002, the API on 127.0.0.1:8080.

`--groups flux,...` (`make serve GROUPS=...`) builds and serves only those app groups' routes. Ctrl-C stops the
API, then Triton (which unloads its models), and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from api.samples import sample_body
from registry import GROUPS, routes_of

from .build import REPO_ROOT, BuildDirs, build
from .triton_server import Ports, TritonServer


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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

    # Stop the same way on Ctrl-C and on `kill`, even when started from a shell that ignores SIGINT in background jobs.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    dirs = BuildDirs.under(Path(args.build_dir))
    t0 = time.perf_counter()
    built = build(dirs, checkpoints=list(dict.fromkeys(r.checkpoint for r in routes)))
    print(f"[serve] built in {time.perf_counter() - t0:.1f}s; starting tritonserver", flush=True)

    triton = TritonServer(
        repository=dirs.repository,
        backends_dir=dirs.backends,
        ports=Ports(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port),
        log_path=Path(args.build_dir) / "tritonserver.log",
        load_models=tuple(built.models),
    ).start()
    api: subprocess.Popen | None = None
    try:
        waited = triton.wait_ready()
        print(f"[serve] Triton ready in {waited:.1f}s (log: {triton.log_path})", flush=True)
        env = dict(os.environ, RYLA_TRITON_GRPC_URL=triton.grpc_url, RYLA_GROUPS=",".join(groups))
        api = subprocess.Popen([sys.executable, "-m", "api", "--host", args.host, "--port", str(args.port)], env=env)
        base = f"http://{args.host}:{args.port}"
        route = routes[0]
        body = json.dumps(sample_body(route, size=route.limits.min_size, seed=None))
        print(
            f"[serve] API on {base} (docs: {base}/docs). Try:\n"
            f"  curl -s -X POST {base}{route.path} -H 'content-type: application/json' -d '{body}' -o out.png\n"
            "[serve] Ctrl-C stops everything.",
            flush=True,
        )
        while api.poll() is None and triton.process is not None and triton.process.poll() is None:
            time.sleep(0.5)
        print("[serve] a process exited; stopping", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n[serve] stopping", flush=True)
        return 0
    finally:
        if api is not None and api.poll() is None:
            api.send_signal(signal.SIGINT)
            try:
                api.wait(15)
            except subprocess.TimeoutExpired:
                api.kill()
        triton.stop()
        print("[serve] stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
