"""Every route's request fields, as its task declares them (registry/tasks.py), through the real app in-process:
each declared rule, broken, is a 422 naming the field, before any model runs; the sample request and values at the
limits are valid; defaults come from the route.

Triton is a closed local port here: a request that passes validation answers 503, which tells "valid" from
"invalid" without a model.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.samples import media_base64, png_base64, sample_body, sample_pixels
from api.schemas import request_model
from api.settings import Settings
from api.video_encoding import encode_video
from registry import ROUTES, Field, Kind, Route, SampleMedia, task_of
from registry.tasks import resolve
from tests.stack_fixtures import free_port
from tests.test_api_media import encode, png_header

SIZE = 64  # small sample media
LORA_LOOKUPS = ("lora_id", "lora_name")  # LoRA fields whose valid values are then looked up in the store


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(triton_grpc_url=f"127.0.0.1:{free_port()}"))) as c:
        yield c


def good(path: str) -> dict[str, Any]:
    """The route's sample request, small media, without optional fields."""
    return dict(_good(path))


@cache
def _good(path: str) -> dict[str, Any]:
    return sample_body(ROUTES[path], size=None, seed=None) | _small_media(path)


@cache
def _small_media(path: str) -> dict[str, str]:
    """Small media for the media fields a request must carry (of a pair of alternatives, the first)."""
    route = ROUTES[path]
    return {f.name: small(f.kind) for f in task_of(route).fields_of(route) if f.media and (f.required or f.either_of)}


def small(kind: Kind) -> str:
    return media_base64(sample_pixels(SampleMedia(SIZE, SIZE), kind), kind)


def with_value(path: str, field: str, value: object) -> dict[str, Any]:
    """The good body with `field` set, its alternative (reference_video / reference_videos) left out."""
    route = ROUTES[path]
    pairs = {(f.name, f.either_of) for f in task_of(route).fields_of(route) if f.either_of}
    partners = {b for a, b in pairs if a == field} | {a for a, b in pairs if b == field}
    return {**{k: v for k, v in good(path).items() if k not in partners}, field: value}


def assert_invalid(r: httpx.Response, field: str, status: int = 422) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == ("invalid_request" if status == 422 else "payload_too_large"), body
    assert body["error"]["field"] == field, body
    assert body["error"]["message"], body


def broken(f: Field, route: Route) -> list[tuple[Any, str]]:
    """(value, the field a 422 names) for values of `f` that each break one of its declared rules, or its kind (no
    coercion of "5" into 5)."""
    lo, gt, hi, step = (
        resolve(getattr(f, r), route) for r in ("minimum", "exclusive_minimum", "maximum", "multiple_of")
    )
    values: list[Any] = []
    if f.kind is Kind.TEXT:
        values += [42, ["text"]]
        if f.max_length is not None:
            values.append("x" * (resolve(f.max_length, route) + 1))
        if f.not_blank:
            values += ["", "   "]
    elif f.kind in (Kind.INTEGER, Kind.NUMBER):
        values += [str(lo if lo is not None else 1), True]
        if f.kind is Kind.INTEGER:
            values.append((lo or 0) + 0.5)
        if lo is not None:
            values.append(lo - (step or 1))
        if gt is not None:
            values.append(gt)
        if hi is not None:
            values.append(hi + (step or 1))
        if step is not None:
            values.append(lo + step // 2)
    elif f.kind is Kind.CHOICE:
        values += ["no-such-choice", 1.0, *(c.upper() for c in f.choices_of(route) if c.upper() != c)]
    elif f.items is not None:  # a list of media: a bad item is named by its index
        return [("not a list", f.name), (["not base64 at all!"], f"{f.name}[0]")]
    else:
        values += ["", "not base64 at all!", 42]
    if not f.required and resolve(f.default, route) is not None:
        values.append(None)  # a field with a default takes a value, not null
    return [(v, f.name) for v in values]


CASES = [
    (path, f.name, value, named)
    for path, route in ROUTES.items()
    for f in task_of(route).fields_of(route)
    for value, named in broken(f, route)
]


@pytest.mark.parametrize(
    ("path", "field", "value", "named"), CASES, ids=[f"{p}-{f}={str(v)[:12]}" for p, f, v, _ in CASES]
)
def test_a_broken_rule_is_a_422_naming_the_field(
    client: TestClient, path: str, field: str, value: object, named: str
) -> None:
    assert_invalid(client.post(path, json=with_value(path, field, value)), named)


REQUIRED = [(p, f.name) for p, r in ROUTES.items() for f in task_of(r).fields_of(r) if f.required]


@pytest.mark.parametrize(("path", "field"), REQUIRED)
def test_a_missing_required_field_is_named(client: TestClient, path: str, field: str) -> None:
    body = good(path)
    del body[field]
    assert_invalid(client.post(path, json=body), field)


EITHER = [(p, f.name, f.either_of) for p, r in ROUTES.items() for f in task_of(r).fields_of(r) if f.either_of]


@pytest.mark.parametrize(("path", "field", "other"), EITHER)
def test_exactly_one_of_two_alternatives(client: TestClient, path: str, field: str, other: str) -> None:
    body = good(path)
    media = body.pop(field)
    assert_invalid(client.post(path, json=body), field)  # neither
    assert_invalid(client.post(path, json={**body, field: media, other: [media]}), other)  # both
    assert client.post(path, json={**body, other: [media]}).status_code == 503  # the other alone is valid


@pytest.mark.parametrize("path", list(ROUTES))
def test_unknown_fields_and_other_tasks_fields_are_named(client: TestClient, path: str) -> None:
    r = client.post(path, json={**good(path), "stpes": 4})
    assert_invalid(r, "stpes")
    assert "stpes" in r.json()["error"]["message"]
    route = ROUTES[path]
    own = {f.name for f in task_of(route).fields_of(route)}
    others = {f.name for r in ROUTES.values() for f in task_of(r).fields_of(r)} - own
    for name in sorted(others):
        assert_invalid(client.post(path, json={**good(path), name: "x"}), name)


@pytest.mark.parametrize("path", list(ROUTES))
def test_the_sample_and_values_at_the_limits_are_valid(client: TestClient, path: str) -> None:
    route = ROUTES[path]
    assert client.post(path, json=good(path)).status_code == 503  # valid; only the backend is missing
    for f in task_of(route).fields_of(route):
        lo, gt, hi = (resolve(getattr(f, r), route) for r in ("minimum", "exclusive_minimum", "maximum"))
        edges: list[Any] = [v for v in (lo, hi) if v is not None]
        if gt is not None:
            edges.append(gt + 1e-3)
        if f.kind is Kind.TEXT and f.max_length is not None:
            edges.append("y" * resolve(f.max_length, route))
        if f.kind is Kind.CHOICE:
            edges += list(f.choices_of(route))
        if f.blank_is_none:
            edges += ["", "   "]  # the product's client sends some fields everywhere, often blank: means none
        for value in edges:
            body = with_value(path, f.name, value)
            if f.sets and isinstance(value, str):
                body = {k: v for k, v in body.items() if k not in f.sets}
            headers = {"accept": "application/json"} if f.name == "num_images" else {}
            expected = 503
            if f.name in LORA_LOOKUPS:  # valid names, looked up in the store before the backend: not there, a 404
                body = {k: v for k, v in body.items() if k not in LORA_LOOKUPS or k == f.name}
                expected = 404
            r = client.post(path, json=body, headers=headers)
            assert r.status_code == expected, (f.name, value, r.text)


@pytest.mark.parametrize("path", list(ROUTES))
def test_defaults_and_limits_come_from_the_route(path: str) -> None:
    route = ROUTES[path]
    model = request_model(route)
    body = model(**good(path))
    schema = model.model_json_schema()
    assert schema["additionalProperties"] is False
    assert (body.steps, body.cfg, body.seed) == (route.steps, route.cfg, None)
    # api.md: PNG images, one unless asked; animated WebP videos.
    images = task_of(route).output.kind == "images"
    assert body.output_format == ("png" if images else "webp") and (not images or body.num_images == 1)
    assert schema["properties"]["steps"]["maximum"] == route.limits.max_steps
    for f in task_of(route).fields_of(route):
        if f.default is not None:
            assert getattr(body, f.name) == resolve(f.default, route), f.name


def bad_media(kind: Kind) -> list[tuple[str, str]]:
    """(value, what the 422's message says) of media that is not what its field takes."""
    good_one = small(kind)
    garbled = [
        ("not base64 at all!", "not valid base64"),
        (good_one[: len(good_one) // 2 + 1], "base64"),  # truncated mid-stream
        (base64.b64encode(b"hello, this is text").decode(), "not a video" if kind is Kind.VIDEO else "not an image"),
    ]
    if kind is Kind.VIDEO:
        return [
            *garbled,
            (base64.b64encode(encode("GIF")).decode(), "still GIF"),  # an image where a video is expected
            (base64.b64encode(encode("PNG", size=(64, 48))).decode(), "PNG image, not a video"),
            (base64.b64encode(base64.b64decode(good_one)[:-40]).decode(), "truncated"),
        ]
    return [
        *garbled,
        (base64.b64encode(encode("GIF")).decode(), "GIF"),
        (base64.b64encode(png_header(100_000, 100_000)).decode(), "pixels"),  # a bomb's header, no pixel data
        (base64.b64encode(encode("PNG", size=(64, 48))[:-40]).decode(), "truncated"),
    ]


@pytest.mark.parametrize("path", [p for p, r in ROUTES.items() if task_of(r).media])
def test_bad_media_is_named_before_any_model_runs(client: TestClient, path: str) -> None:
    media = _small_media(path)
    kinds = {f.name: f.kind for f in task_of(ROUTES[path]).fields}
    for name in media:
        for value, says in bad_media(kinds[name]):
            r = client.post(path, json={**good(path), name: value})
            assert_invalid(r, name)
            assert says in r.json()["error"]["message"], (name, says, r.text)
    prefix = {Kind.VIDEO: "data:image/webp;base64,"}
    with_prefix = {**good(path), **{n: prefix.get(kinds[n], "data:image/png;base64,") + v for n, v in media.items()}}
    assert client.post(path, json=with_prefix).status_code == 503


@pytest.mark.parametrize("path", [p for p, r in ROUTES.items() if any(f.same_size_as for f in task_of(r).media)])
def test_a_mask_of_another_size_is_named(client: TestClient, path: str) -> None:
    route = ROUTES[path]
    for f in (f for f in task_of(route).media if f.same_size_as):
        other = png_base64(sample_pixels(SampleMedia(SIZE + 16, SIZE - 16), f.kind))
        r = client.post(path, json={**good(path), f.name: other})
        assert_invalid(r, f.name)
        assert f"{SIZE + 16}x{SIZE - 16}" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", [p for p, r in ROUTES.items() if any(f.items for f in task_of(r).media)])
def test_a_list_of_media_takes_up_to_its_limit_and_names_the_bad_item(client: TestClient, path: str) -> None:
    route = ROUTES[path]
    for f in (f for f in task_of(route).media if f.items):
        limit, item = resolve(f.max_length, route), small(f.kind)
        assert client.post(path, json=with_value(path, f.name, [item] * limit)).status_code == 503
        assert_invalid(client.post(path, json=with_value(path, f.name, [item] * (limit + 1))), f.name)
        r = client.post(path, json=with_value(path, f.name, [item, "bm90IGFuIGltYWdl"]))  # "not an image"
        assert_invalid(r, f"{f.name}[1]")


@pytest.mark.parametrize("path", [p for p, r in ROUTES.items() if task_of(r).media])
def test_media_over_the_byte_limit_is_413(path: str) -> None:
    """Over the route's media limit (25 MiB), within a body limit raised for the test: 413 naming the field, decided
    from the base64 length before anything is decoded."""
    name = next(iter(_small_media(path)))
    video = task_of(ROUTES[path]).field(name).kind is Kind.VIDEO
    limit = ROUTES[path].limits.max_video_bytes if video else ROUTES[path].limits.max_media_bytes
    big = "A" * (4 * ((limit + 3) // 3) + 4)  # base64 of just over `limit` bytes
    settings = Settings(triton_grpc_url=f"127.0.0.1:{free_port()}", max_body_bytes=len(big) + 1_000_000)
    with TestClient(create_app(settings)) as c:
        assert_invalid(c.post(path, json={**good(path), name: big}), name, status=413)


VIDEO_FIELDS = [(p, f.name) for p, r in ROUTES.items() for f in task_of(r).media if f.kind is Kind.VIDEO]


@pytest.mark.parametrize(("path", "field"), VIDEO_FIELDS)
def test_a_clip_over_the_frame_or_pixel_limit_is_named(client: TestClient, path: str, field: str) -> None:
    """Checked from the container's header before a full decode (api/video_decoding.py)."""
    limits = ROUTES[path].limits
    long_clip = np.zeros((limits.max_video_frames + 1, 16, 16, 3), np.uint8)
    wide = int(limits.max_video_pixels**0.5) + 16  # a square frame just over the pixel limit
    for frames, says in ((long_clip, "frames"), (np.zeros((2, wide, wide, 3), np.uint8), "pixels")):
        data, _ = encode_video(frames, "webp", 50, 8)
        value = base64.b64encode(data).decode()
        r = client.post(path, json=with_value(path, field, value if single(path, field) else [value]))
        assert_invalid(r, field if single(path, field) else f"{field}[0]")
        assert says in r.json()["error"]["message"], r.text


def single(path: str, field: str) -> bool:
    return task_of(ROUTES[path]).field(field).items is None
