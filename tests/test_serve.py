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
from registry import ROUTES, pipeline_model_of

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
    triton_log_path = STACK_DIR / "tritonserver.log"  # stack/serve.py's; tritonserver appends to it
    log_start = triton_log_path.stat().st_size if triton_log_path.exists() else 0
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
        # A few more answered streams, streams the model refuses and a job: a cancel racing the end of a stream whose
        # last response was in once kept Triton from unloading the pipeline model (about one stream in three), so
        # every stop waited out Triton's exit timeout.
        for _ in range(4):
            assert httpx.post(f"http://127.0.0.1:{api}{PATH}", json=body, timeout=120).status_code == 200
        too_long = {**body, "prompt": "fox " * 900}  # under the API's character limit, over the encoder's tokens
        for _ in range(3):
            refused = httpx.post(f"http://127.0.0.1:{api}{PATH}", json=too_long, timeout=120)
            assert refused.status_code == 422 and refused.json()["error"]["field"] == "prompt", refused.text
        job = httpx.post(f"http://127.0.0.1:{api}{PATH}", json=body, headers={"Prefer": "respond-async"}, timeout=60)
        status_url = f"http://127.0.0.1:{api}{job.json()['status_url']}"
        while (status := httpx.get(status_url, timeout=10).json()["status"]) in ("queued", "running"):
            time.sleep(0.1)
        assert status == "succeeded"
        # Only the group asked for is served.
        served = {row["path"] for row in httpx.get(f"http://127.0.0.1:{api}/v1/models").json()["data"]}
        assert served == {p for p, route in ROUTES.items() if route.group == ROUTES[PATH].group}
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=120)
        assert serve.returncode == 0, out
        assert "[serve] stopped" in out
        assert "[supervise]" not in out, out  # a stop is not a death: nothing was restarted
        # Triton unloaded every model, the pipeline too, rather than giving up on them at its exit timeout.
        triton_log = triton_log_path.read_bytes()[log_start:].decode(errors="replace")  # this run's lines
        assert f"successfully unloaded '{pipeline_model_of(PATH)}'" in triton_log, triton_log[-2000:]
        assert "Timeout 1: Found" not in triton_log, triton_log[-2000:]
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
