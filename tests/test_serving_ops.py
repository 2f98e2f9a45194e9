"""Operating the stack: perf_analyzer and the GPU benchmark's stream client stay wired to every route and component.
(A stopped or restarted Triton, an unloaded model: test_api_triton.py, against a real Triton serving a stand-in
model.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perf import perf_analyzer
from registry import ROUTES, pipeline_model_of, task_of
from stack.triton_server import TritonServer

PATH = next(iter(ROUTES))


def test_perf_analyzer_measures_the_pipeline(triton: TritonServer, tmp_path: Path) -> None:
    size = ROUTES[PATH].limits.min_size
    row = perf_analyzer.run(PATH, triton.grpc_url, tmp_path, concurrency="1", request_count=2, size=size, steps=1)
    assert row["Inferences/Second"] > 0
    assert row["p50 latency"] > 0


def test_the_benchmarks_stream_client_gets_the_pipelines_answer(triton: TritonServer) -> None:
    """perf/served.py's client (the GPU benchmark's) reads past the progress responses to the answer, the same
    image the API serves for that request."""
    from perf.served import _request
    from perf.triton_stream import infer

    route, size = ROUTES[PATH], ROUTES[PATH].limits.min_size
    out = infer(triton.grpc_url, pipeline_model_of(PATH), _request(PATH, size, size, {"steps": 2}), timeout_s=120)
    assert out["IMAGES"].shape == (1, size, size, 3) and out["IMAGES"].dtype == np.uint8
    assert out["MODEL"].tobytes().decode().startswith("local:") and float(out["PIPELINE_S"][0]) > 0, route


@pytest.mark.parametrize("path", list(ROUTES))
def test_perf_analyzer_sends_every_input_of_the_routes_task(path: str) -> None:
    """Its input data is the route's sample request as the API would send it: every required tensor of the task,
    media as arrays in their tensor's layout, optional inputs left out."""
    (data,) = perf_analyzer.input_data(path, size=64)["data"]
    spec = task_of(ROUTES[path])
    assert {s.name for s in spec.inputs if not s.optional} <= set(data) <= {s.name for s in spec.inputs}
    for s in spec.inputs:
        if s.name in data:
            shape = data[s.name]["shape"]
            assert len(shape) == len(s.dims) and len(data[s.name]["content"]) == int(np.prod(shape)), s.name
    assert bytes(data["CHECKPOINT"]["content"]).decode() == ROUTES[path].checkpoint


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
