"""Operating the stack: a stopped Triton gives 503 and the API recovers when it is back; perf_analyzer stays wired."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from perf import perf_analyzer
from stack.triton_server import TritonServer

BODY = {"prompt": "a small red boat", "width": 256, "height": 256, "steps": 1, "seed": 3}


def test_stopped_triton_is_503_and_the_api_recovers(client: httpx.Client, triton: TritonServer) -> None:
    assert client.post("/flux", json=BODY).status_code == 200
    triton.stop()
    try:
        down = client.post("/flux", json=BODY)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "backend_unavailable"
        assert int(down.headers["retry-after"]) > 0
        assert client.get("/ready").status_code == 503
    finally:
        triton.start()
        triton.wait_ready(timeout_s=300)
    # The same API process, no restart: its gRPC channel reconnects to the new server within its 1 s backoff.
    back = None
    for _ in range(20):
        back = client.post("/flux", json=BODY)
        if back.status_code == 200:
            break
        time.sleep(0.5)
    assert back is not None and back.status_code == 200, back.text if back else None
    assert client.get("/ready").status_code == 200


def test_perf_analyzer_measures_the_pipeline(triton: TritonServer, tmp_path: Path) -> None:
    row = perf_analyzer.run(
        "/flux", triton.grpc_url, tmp_path, concurrency="1", request_count=2, width=256, height=256, steps=1
    )
    assert row["Inferences/Second"] > 0
    assert row["p50 latency"] > 0


def test_perf_analyzer_measures_one_transformer_step(triton: TritonServer, model_repository: Path, tmp_path) -> None:
    from registry import component_of

    _, component = component_of("flux_dev_transformer")
    # The version Triton serves (version_policy latest 1): each re-export of the component is a new one.
    model_dir = model_repository / component.triton_model
    onnx_path = model_dir / str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())) / "model.onnx"
    sizes = {"batch": 1, "image_tokens": 256, "t5_tokens": 512}
    shapes = perf_analyzer.component_shapes(component, onnx_path, sizes)
    assert shapes["hidden_states"][:2] == [1, 256] and shapes["img_ids"] == [256, 3] and shapes["guidance"] == [1]
    row = perf_analyzer.run_component(component, onnx_path, sizes, triton.grpc_url, tmp_path, request_count=2)
    assert row["Inferences/Second"] > 0


def test_the_stub_finds_this_interpreters_libpython_first_and_nothing_else_of_its_folder(tmp_path: Path) -> None:
    """Only a link to libpython goes before the libraries torch bundles: the interpreter's LIBDIR can be a system
    folder with another cuDNN, which cost the served Qwen-Image transformer its cuDNN attention on the GPU machine."""
    import os
    import sysconfig

    from stack.triton_server import TritonInstall

    install = TritonInstall.from_pytriton()
    install.lay_out_backends(tmp_path)
    first = Path(install.env(tmp_path)["LD_LIBRARY_PATH"].split(os.pathsep)[0])
    soname = sysconfig.get_config_var("INSTSONAME")
    assert [p.name for p in first.iterdir()] == [soname]
    assert (first / soname).resolve() == (Path(sysconfig.get_config_var("LIBDIR")) / soname).resolve()
    ambient = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    entries = install.env(tmp_path)["LD_LIBRARY_PATH"].split(os.pathsep)
    assert sysconfig.get_config_var("LIBDIR") not in entries or sysconfig.get_config_var("LIBDIR") in ambient
