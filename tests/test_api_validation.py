"""What the request models do beyond each field's own rules (those are tests/contract/test_fields.py): presets
that set other fields, more than one image needing a JSON answer, and bodies that are no JSON object.

The real app runs in-process; its real tritonclient points at a closed local port, so a request that passes
validation meets a stopped Triton and answers 503, which tells "valid" from "invalid" without a model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.generate import Prepared, pipeline_inputs
from api.samples import sample_body
from api.schemas import request_model
from api.settings import Settings
from registry import ROUTES, task_of
from registry.tasks import resolve

from .stack_fixtures import free_port

NO_MEDIA = Prepared(media={}, loras=None)

PATHS = list(ROUTES)
FIRST = PATHS[0]
PRESETS = [(p, f) for p, r in ROUTES.items() for f in task_of(r).fields_of(r) if f.sets]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(triton_grpc_url=f"127.0.0.1:{free_port()}"))) as c:
        yield c


def good(path: str) -> dict:
    return sample_body(ROUTES[path], size=ROUTES[path].limits.min_size, seed=None)


def field_of(r) -> str:  # noqa: ANN001
    return r.json()["error"]["field"]


@pytest.mark.parametrize("path", [p for p in PATHS if any(f.name == "num_images" for f in task_of(ROUTES[p]).fields)])
def test_several_images_need_a_json_answer(client: TestClient, path: str) -> None:
    body = {**good(path), "num_images": 2}
    for headers in ({}, {"accept": "image/png"}):
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 422 and field_of(r) == "num_images", r.text
    # With JSON accepted the request is valid and goes on to the (stopped) backend.
    assert client.post(path, json=body, headers={"accept": "application/json"}).status_code == 503


def test_malformed_json_and_non_objects_are_422(client: TestClient) -> None:
    r = client.post(FIRST, content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    for body in ([1, 2], "a fox", None):
        r = client.post(FIRST, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text


def test_json_without_content_type_is_parsed(client: TestClient) -> None:
    import json

    body = good(FIRST)
    assert client.post(FIRST, content=json.dumps(body).encode()).status_code == 503
    required = next(f.name for f in task_of(ROUTES[FIRST]).fields if f.required)
    r = client.post(FIRST, content=json.dumps({**body, required: ""}).encode())
    assert r.status_code == 422 and field_of(r) == required


@pytest.mark.parametrize(("path", "preset"), PRESETS, ids=[f"{p}-{f.name}" for p, f in PRESETS])
def test_a_preset_sets_its_fields_and_conflicts_with_them(client: TestClient, path: str, preset) -> None:
    route = ROUTES[path]
    model = request_model(route)
    base = good(path)
    for name in preset.sets:
        base.pop(name, None)
    rows = resolve(preset.choices, route)
    for row in rows:
        name, *values = row
        inputs = pipeline_inputs(route, model(**base, **{preset.name: name}), seed=1, prepared=NO_MEDIA)
        assert [inputs[f.upper()] for f in preset.sets] == values
        assert client.post(path, json={**base, preset.name: name}).status_code == 503  # valid
    # api.md's presets, literally: 16:9 is 1664 x 928.
    if preset.name == "aspect_ratio":
        inputs = pipeline_inputs(route, model(**base, aspect_ratio="16:9"), seed=1, prepared=NO_MEDIA)
        assert (inputs["WIDTH"], inputs["HEIGHT"]) == (1664, 928)
    inputs = pipeline_inputs(route, model(**base), seed=1, prepared=NO_MEDIA)
    assert [inputs[f.upper()] for f in preset.sets] == [getattr(route, f) for f in preset.sets]
    # An explicit value of a field it sets is ambiguous: 422 naming the preset, even when it equals the preset's.
    first = rows[1]
    for extra in (
        {preset.sets[0]: first[1]},
        {preset.sets[1]: first[2]},
        dict(zip(preset.sets, first[1:], strict=True)),
    ):
        r = client.post(path, json={**base, preset.name: first[0], **extra})
        assert r.status_code == 422 and field_of(r) == preset.name, r.text
