"""The API against a real tritonserver: the answer (bytes, JSON, headers), the group queue, the route timeout, and
every mapping of a Triton failure onto the envelope, quickly.

Triton serves a small stand-in for the pipeline model: the text-to-image task's tensors (registry/tasks.py,
generated into its config), images whose pixels encode the request, and behaviours a real
pipeline only shows under load or failure (a slow generation that honours cancellation, a token-limit rejection, a
crash). The real FLUX pipeline through the same API is tested in test_serving_*.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.settings import PRICE_PER_SECOND, Settings
from registry import (
    CHECKPOINTS,
    GROUPS,
    ROUTES,
    SOURCE_PARAMETER_PREFIX,
    TASKS,
    Task,
    TensorSpec,
    invalid_request_message,
    pipeline_model_of,
)
from stack.triton_server import Ports, TritonServer

from .stack_fixtures import free_port, running_api

PIPELINE = pipeline_model_of("/flux")
# The stand-in is the FLUX group's pipeline (the text-to-image contract); the API under test serves that group.
GROUP = ROUTES["/flux"].group
STAND_IN_ROUTES = {p: r for p, r in ROUTES.items() if r.group == GROUP}
assert all(pipeline_model_of(p) == PIPELINE for p in STAND_IN_ROUTES), "one stand-in serves the group's routes"
ASYNC = {"Prefer": "respond-async"}
SMALL = {"width": 256, "height": 256, "steps": 1}
TIMEOUT_S = 2.0  # RYLA_GENERATION_TIMEOUT_S of the API under test
TOKEN_LIMIT = invalid_request_message("prompt", "the prompt is over the text encoder's token limit")

STANDIN_MODEL = """
import json, time
import numpy as np
import triton_python_backend_utils as pb_utils


def _value(request, name):
    v = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
    return {"shape": list(v.shape), "dtype": str(v.dtype),
            "value": v.tobytes().decode() if v.dtype == np.uint8 else v.reshape(-1)[0].item()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.names = [i["name"] for i in config["input"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            t0 = time.perf_counter()
            sent = [n for n in self.names if pb_utils.get_input_tensor_by_name(request, n) is not None]
            got = {name: _value(request, name) for name in sent}
            with open(self.params["record"], "a") as f:
                f.write(json.dumps(got) + "\\n")
            v = {k: x["value"] for k, x in got.items()}
            prompt = v["PROMPT"]
            if prompt.startswith("sleep:"):
                while time.perf_counter() - t0 < float(prompt[6:]) and not request.is_cancelled():
                    time.sleep(0.01)
            if prompt == "too many tokens":
                error = pb_utils.TritonError(TOKEN_LIMIT, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if prompt == "not our invalid":  # the code without our message: Triton's own kind, about our tensors
                error = pb_utils.TritonError("unexpected shape for input 'WIDTH'", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if prompt == "crash":
                raise RuntimeError("secret-detail of a crash")
            n, h, w = v["NUM_IMAGES"], v["HEIGHT"], v["WIDTH"]
            images = np.zeros((n, h, w, 3), np.uint8)
            images[..., 0] = v["SEED"] % 256
            images[..., 1] = v["STEPS"]
            images[..., 2] = np.arange(n, dtype=np.uint8)[:, None, None]
            label = self.params["source." + v["CHECKPOINT"]].encode()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("IMAGES", images),
                pb_utils.Tensor("MODEL", np.frombuffer(label, dtype=np.uint8).copy()),
                pb_utils.Tensor("PIPELINE_S", np.array([time.perf_counter() - t0], dtype=np.float32)),
            ]))
        return responses
"""


def _tensors(kind: str, specs: tuple[TensorSpec, ...]) -> str:
    rows = []
    for s in specs:
        data_type = "TYPE_STRING" if s.dtype == "BYTES" else f"TYPE_{s.dtype}"
        optional = " optional: true" if s.optional else ""
        rows.append(f'{{ name: "{s.name}" data_type: {data_type} dims: [ {", ".join(map(str, s.dims))} ]{optional} }}')
    return f"{kind} [\n  " + ",\n  ".join(rows) + "\n]\n"


def source_of(checkpoint: str) -> str:
    return f"local:/standin/{checkpoint}"


def write_repository(root: Path, record: Path) -> Path:
    model_dir = root / PIPELINE / "1"
    model_dir.mkdir(parents=True)
    (model_dir / "model.py").write_text(f"TOKEN_LIMIT = {TOKEN_LIMIT!r}\n" + STANDIN_MODEL)
    params = {"record": str(record), **{SOURCE_PARAMETER_PREFIX + key: source_of(key) for key in CHECKPOINTS}}
    (root / PIPELINE / "config.pbtxt").write_text(
        f'name: "{PIPELINE}"\nbackend: "python"\nmax_batch_size: 0\n'
        + _tensors("input", TASKS[Task.TEXT_TO_IMAGE].inputs)
        + _tensors("output", TASKS[Task.TEXT_TO_IMAGE].output.stream_tensors)
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
        + "parameters [\n  "
        + ",\n  ".join(f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items())
        + "\n]\n"
    )
    return root


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("standin") / "requests.jsonl"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, record: Path) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("triton")
    server = TritonServer(
        repository=write_repository(root / "repository", record),
        backends_dir=root / "backends",
        ports=Ports(free_port(), free_port(), free_port()),
        log_path=root / "tritonserver.log",
        load_models=(PIPELINE,),
    ).start()
    try:
        server.wait_ready(timeout_s=60)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(triton: TritonServer) -> Iterator[str]:
    """`python -m api` in a subprocess, as Modal and the serving tests run it."""
    with running_api(
        triton.grpc_url, RYLA_GPU_TYPE="H100", RYLA_GENERATION_TIMEOUT_S=str(TIMEOUT_S), RYLA_GROUPS=GROUP
    ) as url:
        yield url


@pytest.fixture()
def client(api: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=30) as c:
        yield c


def last_request(record: Path) -> dict:
    return json.loads(record.read_text().splitlines()[-1])


def _repository_call(triton: TritonServer, action: str) -> None:
    url = f"{triton.http_url}/v2/repository/models/{PIPELINE}/{action}"
    with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=30) as r:
        assert r.status == 200


def _timing(header: str) -> dict[str, float]:
    parts = (item.strip().split(";dur=") for item in header.split(","))
    return {name: float(ms) / 1000 for name, ms in parts}


def test_first_generation_is_the_cold_start(triton: TritonServer) -> None:
    # Its own app in-process (TestClient runs the lifespan): the module's API has answered other requests.
    with TestClient(create_app(Settings(triton_grpc_url=triton.grpc_url))) as c:
        first = c.post("/flux", json={"prompt": "a fox", **SMALL})
        second = c.post("/flux", json={"prompt": "a fox", **SMALL})
        assert (first.headers["x-cold-start"], second.headers["x-cold-start"]) == ("true", "false")
        metrics = c.get("/metrics").text
        cold = next(line for line in metrics.splitlines() if line.startswith("ryla_cold_start_seconds "))
        assert float(cold.split()[1]) > 0


@pytest.mark.parametrize("path", sorted(STAND_IN_ROUTES))
def test_raw_image_with_headers_and_the_contract_inputs(client: httpx.Client, record: Path, path: str) -> None:
    route = ROUTES[path]
    r = client.post(path, json={"prompt": "a fox", "width": 512, "height": 256, "seed": 1234})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "PNG" and image.size == (512, 256)
    assert image.getpixel((0, 0)) == (1234 % 256, route.steps, 0)  # seed and the route's default steps arrived
    assert r.headers["x-seed"] == "1234"
    assert r.headers["x-model"] == source_of(route.checkpoint)
    assert r.headers["x-gpu-type"] == "H100"
    assert len(r.headers["x-request-id"]) >= 16
    assert r.headers["x-cold-start"] in {"true", "false"}
    timing = _timing(r.headers["server-timing"])
    assert {"queue", "triton", "pipeline", "encode", "api", "total"} <= set(timing)
    assert float(r.headers["x-execution-time-sec"]) == pytest.approx(timing["total"], abs=2e-3)
    cost = r.headers["x-cost-usd"]
    assert len(cost.split(".")[1]) == 6
    assert float(cost) == pytest.approx(timing["triton"] * PRICE_PER_SECOND["H100"], abs=2e-6)
    # Exactly the registry's input tensors with the route's defaults: numbers one element of their dtype, text its
    # UTF-8 bytes in a UINT8 tensor.
    sent = last_request(record)
    # All but the LoRA set: these routes run the base model.
    specs = [s for s in TASKS[Task.TEXT_TO_IMAGE].inputs if s.name != "LORAS"]
    assert list(sent) == [s.name for s in specs]
    for spec in specs:
        text = spec.dtype == "UINT8"
        expected = [len(sent[spec.name]["value"].encode())] if text else [1]
        assert sent[spec.name]["shape"] == expected, spec.name
    values = {k: t["value"] for k, t in sent.items()}
    assert values == {
        "CHECKPOINT": route.checkpoint,
        "PROMPT": "a fox",
        "NEGATIVE_PROMPT": "",
        "WIDTH": 512,
        "HEIGHT": 256,
        "STEPS": route.steps,
        "CFG": pytest.approx(route.cfg),
        "SEED": 1234,
        "NUM_IMAGES": 1,
    }


def test_seed_is_drawn_when_absent(client: httpx.Client, record: Path) -> None:
    seeds = set()
    for _ in range(3):
        r = client.post("/flux", json={"prompt": "a fox", **SMALL})
        assert r.status_code == 200
        seeds.add(int(r.headers["x-seed"]))
        assert last_request(record)["SEED"]["value"] == int(r.headers["x-seed"])
        assert 0 <= int(r.headers["x-seed"]) < 2**32
    assert len(seeds) == 3


@pytest.mark.parametrize(
    ("fmt", "mime", "pil"),
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
def test_output_formats_tell_the_truth(client: httpx.Client, fmt: str, mime: str, pil: str) -> None:
    r = client.post("/flux", json={"prompt": "a fox", "output_format": fmt, "output_quality": 80, **SMALL})
    assert r.status_code == 200 and r.headers["content-type"] == mime
    assert Image.open(io.BytesIO(r.content)).format == pil


def test_json_answer_with_several_images(client: httpx.Client) -> None:
    body = {"prompt": "a fox", "num_images": 3, "seed": 7, "negative_prompt": "blur", "output_format": "webp", **SMALL}
    r = client.post("/flux-dev", json=body, headers={"accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = r.json()
    assert set(answer) == {
        "request_id", "route", "model", "seed", "images", "timings", "cold_start", "cost_usd", "gpu_type"
    }  # fmt: skip
    assert answer["request_id"] == r.headers["x-request-id"]
    assert (answer["route"], answer["seed"], answer["gpu_type"]) == ("/flux-dev", 7, "H100")
    assert answer["model"] == source_of(ROUTES["/flux-dev"].checkpoint) == r.headers["x-model"]
    assert set(answer["timings"]) == {"queue_s", "inference_s", "total_s"}
    assert answer["timings"]["total_s"] >= answer["timings"]["inference_s"] > 0
    assert answer["cost_usd"] == pytest.approx(answer["timings"]["inference_s"] * PRICE_PER_SECOND["H100"], abs=1e-6)
    assert len(answer["images"]) == 3
    for index, item in enumerate(answer["images"]):
        assert (item["mime_type"], item["width"], item["height"]) == ("image/webp", 256, 256)
        image = Image.open(io.BytesIO(base64.b64decode(item["data"])))
        assert image.format == "WEBP" and image.size == (256, 256)
        assert abs(image.getpixel((8, 8))[2] - index) <= 3  # the images in order (lossy webp: near)


def test_model_rejection_is_422_naming_the_field(client: httpx.Client) -> None:
    r = client.post("/flux", json={"prompt": "too many tokens", **SMALL})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "invalid_request",
        "message": "prompt: the prompt is over the text encoder's token limit",
        "field": "prompt",
    }


def test_only_the_models_message_with_a_field_is_the_clients_fault(client: httpx.Client) -> None:
    r = client.post("/flux", json={"prompt": "not our invalid", **SMALL})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal", r.text


def test_model_crash_is_500_with_the_request_id_and_no_detail(client: httpx.Client) -> None:
    r = client.post("/flux", json={"prompt": "crash", **SMALL})
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal" and r.headers["x-request-id"] in error["message"]
    assert "secret-detail" not in r.text and "model.py" not in r.text and "Traceback" not in r.text


def test_timeout_is_504_and_the_work_is_cancelled(client: httpx.Client) -> None:
    t0 = time.monotonic()
    r = client.post("/flux", json={"prompt": "sleep:30", **SMALL})
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert TIMEOUT_S <= time.monotonic() - t0 < TIMEOUT_S + 1.5
    # The model saw the cancellation and stopped: the next request does not wait behind 30 s of work.
    t0 = time.monotonic()
    assert client.post("/flux", json={"prompt": "a fox", **SMALL}).status_code == 200
    assert time.monotonic() - t0 < 1.0


async def test_full_queue_is_429_busy(api: str) -> None:
    group = GROUPS[ROUTES["/flux"].group]
    capacity = group.max_concurrency + group.max_queue
    async with httpx.AsyncClient(base_url=api, timeout=30) as c:

        def post(prompt: str) -> asyncio.Task:
            return asyncio.ensure_future(c.post("/flux", json={"prompt": prompt, **SMALL}))

        # No slot may free before the extras arrive, even on 2 busy cores (0.8 s once did); within TIMEOUT_S.
        slow = [post("sleep:1.6") for _ in range(group.max_concurrency)]
        await asyncio.sleep(0.3)  # the slow ones hold every slot
        queued = [post("a fox") for _ in range(group.max_queue)]
        await asyncio.sleep(0.3)  # the queue is full
        extra = await asyncio.gather(*(c.post("/flux-dev", json={"prompt": "x", **SMALL}) for _ in range(2)))
        done = await asyncio.gather(*slow, *queued)
        for r in extra:
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "busy" and int(r.headers["retry-after"]) > 0
        assert [r.status_code for r in done] == [200] * capacity
        waits = sorted(_timing(r.headers["server-timing"])["queue"] for r in done)
        assert waits[-1] > 0.3  # the last of the queue waited for the slow ones
        assert 'ryla_requests_total{route="/flux-dev",status="429"}' in (await c.get("/metrics")).text


def test_ready_and_models_when_loaded(client: httpx.Client) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {PIPELINE: True}
    rows = {row["path"]: row for row in client.get("/v1/models").json()["data"]}
    assert set(rows) == set(STAND_IN_ROUTES)  # the group's routes only
    for path, route in STAND_IN_ROUTES.items():
        assert rows[path]["loaded"] is True
        assert rows[path]["model"] == source_of(route.checkpoint)  # from the model's config parameters


def test_unloaded_model_is_503_and_comes_back(client: httpx.Client, triton: TritonServer) -> None:
    _repository_call(triton, "unload")
    try:
        r = client.post("/flux", json={"prompt": "a fox", **SMALL})
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert "not loaded" in r.json()["error"]["message"] and int(r.headers["retry-after"]) > 0
        assert client.get("/ready").status_code == 503
        assert not any(row["loaded"] for row in client.get("/v1/models").json()["data"])
    finally:
        _repository_call(triton, "load")
    assert client.post("/flux", json={"prompt": "a fox", **SMALL}).status_code == 200


def test_api_recovers_when_triton_restarts(client: httpx.Client, triton: TritonServer) -> None:
    triton.stop()
    try:
        down = client.post("/flux", json={"prompt": "a fox", **SMALL})
        assert down.status_code == 503 and int(down.headers["retry-after"]) > 0
        assert client.get("/ready").status_code == 503
    finally:
        triton.start()
        triton.wait_ready(timeout_s=60)
    # The same API process: its channel reconnects within its 1 s backoff.
    deadline = time.monotonic() + 5
    while (r := client.post("/flux", json={"prompt": "a fox", **SMALL})).status_code != 200:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert client.get("/ready").status_code == 200


def test_metrics_after_generations(client: httpx.Client) -> None:
    assert client.post("/flux", json={"prompt": "a fox", **SMALL}).status_code == 200
    text = client.get("/metrics").text
    assert 'ryla_requests_total{route="/flux",status="200"}' in text
    assert 'ryla_generation_stage_seconds_count{route="/flux",stage="triton"}' in text
    assert 'ryla_in_flight{group="flux"} 0.0' in text


async def test_answer_deadline_bounds_queue_and_generation(triton: TritonServer) -> None:
    # Modal's web endpoints redirect an answer later than 150 s; RYLA_ANSWER_DEADLINE_S keeps every answer inside
    # such a bound, the route's own limit (60 s for /flux) notwithstanding.
    deadline = 1.6
    group = GROUPS[GROUP]
    with running_api(triton.grpc_url, RYLA_ANSWER_DEADLINE_S=str(deadline), RYLA_GROUPS=GROUP) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            t0 = time.monotonic()
            r = await c.post("/flux", json={"prompt": "sleep:30", **SMALL})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            assert deadline <= time.monotonic() - t0 < deadline + 1.0

            # Slots held for 1.0 s each (done in time); a queued request waits for them, and the 1.0 s of work it
            # then asks for no longer fits: its generation limit is what the deadline left it.
            holders = [
                asyncio.ensure_future(c.post("/flux", json={"prompt": "sleep:1.0", **SMALL}))
                for _ in range(group.max_concurrency)
            ]
            await asyncio.sleep(0.2)
            t0 = time.monotonic()
            queued = await c.post("/flux", json={"prompt": "sleep:1.0", **SMALL})
            waited = time.monotonic() - t0
            assert [h.status_code for h in await asyncio.gather(*holders)] == [200] * group.max_concurrency
            assert queued.status_code == 504, queued.text
            assert deadline <= waited < deadline + 1.0

            # A job is not an answer a proxy can cut short: the deadline does not bound it, the route's limit does.
            job = await c.post("/flux", json={"prompt": f"sleep:{deadline + 1.0}", **SMALL}, headers=ASYNC)
            assert job.status_code == 202, job.text
            while (status := (await c.get(job.json()["status_url"])).json())["status"] in ("queued", "running"):
                await asyncio.sleep(0.1)
            assert status["status"] == "succeeded", status
            assert (await c.get(job.json()["result_url"])).status_code == 200
