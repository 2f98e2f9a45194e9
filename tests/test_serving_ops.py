"""Operating the stack: a stopped Triton gives 503 and the API recovers when it is back; perf_analyzer stays wired."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from api.samples import sample_body
from perf import perf_analyzer
from registry import ROUTES, family_of, pipeline_model_of, routes_of, task_of
from stack.triton_server import Ports, TritonServer

from .stack_fixtures import free_port, running_api

PATH = next(iter(ROUTES))
GROUP = ROUTES[PATH].group
BODY = sample_body(ROUTES[PATH], steps=1, size=ROUTES[PATH].limits.min_size, seed=3)


def group_models(group: str) -> tuple[str, ...]:
    """The models a group's routes need: their pipelines and the components of their checkpoints."""
    models: dict[str, None] = {}
    for route in routes_of(group):
        family = family_of(route.checkpoint)
        models |= dict.fromkeys(c.triton_model for c in family.components_for(route.checkpoint).values())
        models[pipeline_model_of(route.path)] = None
    return tuple(models)


def test_stopped_triton_is_503_and_the_api_recovers(stack_dirs, model_repository: Path, tmp_path: Path) -> None:
    # A server of its own over the session's repository, loading one group's models: quick to stop and start again.
    triton = TritonServer(
        model_repository,
        stack_dirs.backends,
        Ports(free_port(), free_port(), free_port()),
        tmp_path / "triton.log",
        load_models=group_models(GROUP),
    ).start()
    try:
        triton.wait_ready(timeout_s=300)
        with running_api(triton.grpc_url, RYLA_GROUPS=GROUP) as url, httpx.Client(base_url=url, timeout=300) as client:
            assert client.post(PATH, json=BODY).status_code == 200
            triton.stop()
            try:
                down = client.post(PATH, json=BODY)
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
                back = client.post(PATH, json=BODY)
                if back.status_code == 200:
                    break
                time.sleep(0.5)
            assert back is not None and back.status_code == 200, back.text if back else None
            assert client.get("/ready").status_code == 200
    finally:
        triton.stop()


def test_perf_analyzer_measures_the_pipeline(triton: TritonServer, tmp_path: Path) -> None:
    size = ROUTES[PATH].limits.min_size
    row = perf_analyzer.run(PATH, triton.grpc_url, tmp_path, concurrency="1", request_count=2, size=size, steps=1)
    assert row["Inferences/Second"] > 0
    assert row["p50 latency"] > 0


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
