"""`make serve` (python -m stack.serve) as a user runs it: it builds, starts Triton and the API, answers a route's
request, and on Ctrl-C stops the API and Triton and exits 0. One app group (`--groups`), over the test stack's build
folder (its checkpoints and exports are reused), on free local ports."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from api.samples import sample_body
from registry import ROUTES

from .fixtures import REPO_ROOT, STACK_DIR
from .stack_fixtures import free_port

PATH = next(iter(ROUTES))


def test_serve_answers_and_stops_on_ctrl_c(model_repository) -> None:
    api, http, grpc, metrics = free_port(), free_port(), free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "stack.serve",
        f"--build-dir={STACK_DIR}",
        f"--groups={ROUTES[PATH].group}",
        f"--port={api}",
        f"--triton-http-port={http}",
        f"--triton-grpc-port={grpc}",
        f"--triton-metrics-port={metrics}",
    ]
    serve = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert serve.poll() is None, serve.stdout.read() if serve.stdout else ""
            assert time.monotonic() < deadline, "make serve did not come up in 300 s"
            try:
                if httpx.get(f"http://127.0.0.1:{api}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        body = sample_body(ROUTES[PATH], steps=1, size=ROUTES[PATH].limits.min_size)
        r = httpx.post(f"http://127.0.0.1:{api}{PATH}", json=body, timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        # Only the group asked for is served.
        served = {row["path"] for row in httpx.get(f"http://127.0.0.1:{api}/v1/models").json()["data"]}
        assert served == {p for p, route in ROUTES.items() if route.group == ROUTES[PATH].group}
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=120)
        assert serve.returncode == 0, out
        assert "[serve] stopped" in out
        assert "[supervise]" not in out, out  # a stop is not a death: nothing was restarted
        for port in (api, http):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                raise AssertionError(f"port {port} still answers after make serve stopped")
            except httpx.TransportError:
                pass
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
