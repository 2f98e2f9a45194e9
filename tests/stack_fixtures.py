"""Session fixtures that serve: the local repository, a real tritonserver and the API as a uvicorn subprocess.

Both listen on 127.0.0.1 only, on free ports, so a running `make serve` does not collide with the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.build import BuildDirs, build
from stack.triton_server import Ports, TritonServer

from .fixtures import STACK_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack_dirs() -> BuildDirs:
    return BuildDirs.under(STACK_DIR)


@pytest.fixture(scope="session")
def model_repository(stack_dirs: BuildDirs) -> Path:
    build(stack_dirs)
    return stack_dirs.repository


@pytest.fixture(scope="session")
def triton(model_repository: Path, stack_dirs: BuildDirs) -> Iterator[TritonServer]:
    server = TritonServer(
        repository=model_repository,
        backends_dir=stack_dirs.backends,
        ports=Ports(free_port(), free_port(), free_port()),
        log_path=STACK_DIR / "tritonserver-test.log",
    ).start()
    try:
        server.wait_ready(timeout_s=300)
        yield server
    finally:
        server.stop()


def start_api(triton_grpc_url: str, port: int, **env: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "RYLA_TRITON_GRPC_URL": triton_grpc_url, "RYLA_LORA_STORE": str(STACK_DIR / "loras"), **env},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"api exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError("api did not come up in 60 s")


def stop_api(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()


@contextlib.contextmanager
def running_api(triton_grpc_url: str, **env: str) -> Iterator[str]:
    """`python -m api` on a free local port for the duration; yields its base URL."""
    port = free_port()
    process = start_api(triton_grpc_url, port, **env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_api(process)


@pytest.fixture(scope="session")
def api_url(triton: TritonServer) -> Iterator[str]:
    with running_api(triton.grpc_url) as url:
        yield url


@pytest.fixture()
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=300) as c:
        yield c


VAE = "flux_vae_decoder"


@pytest.fixture(scope="session")
def vae_exports(model_repository: Path, stack_dirs: BuildDirs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder holding the FLUX VAE's FP32 export (the test stack's) and its BF16 export (made here), each
    with its manifest: what bf16 and fp32 plans of the VAE are built from."""
    from checkpoints import resolve
    from export import manifest as mf
    from export.family import export_family

    onnx_dir = tmp_path_factory.mktemp("vae-exports")
    shutil.copytree(stack_dirs.onnx / VAE, onnx_dir / VAE)
    mf.save(onnx_dir, {"models": {VAE: mf.load(stack_dirs.onnx)["models"][VAE]}})
    checkpoint = {"flux-schnell": resolve("flux-schnell", "tiny", stack_dirs.checkpoints).path}
    export_family("flux", checkpoint, onnx_dir, dtype="bfloat16", components=[VAE])
    return onnx_dir
