"""Properties of the request validators, on every route and field the registry declares: a value inside a field's
rule is accepted, one outside it (or of another JSON type) is a 422 naming that field, and an unknown field is a
422 naming it.

The real app in-process through httpx's ASGITransport, its lifespan run; its tritonclient points at a closed local
port, so a body that passes validation meets a stopped Triton and answers 503: "valid" without a model.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.samples import sample_body
from api.schemas import request_model
from api.settings import Settings
from registry import ROUTES, Field, Kind, Route, task_of
from registry.tasks import resolve

from .stack_fixtures import free_port

Post = Callable[[str, Any], httpx.Response]
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
# More than one image needs a JSON answer: asked for always, so num_images is judged by its range alone.
HEADERS = {"accept": "application/json"}


@pytest.fixture(scope="module")
def post() -> Iterator[Post]:
    app = create_app(Settings(triton_grpc_url=f"127.0.0.1:{free_port()}"))
    with asyncio.Runner() as runner:  # one loop for every example: the gRPC channel the lifespan made lives on it
        lifespan = app.router.lifespan_context(app)
        runner.run(lifespan.__aenter__())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=30)
        try:
            yield lambda path, body: runner.run(client.post(path, json=body, headers=HEADERS))
        finally:
            runner.run(client.aclose())
            runner.run(lifespan.__aexit__(None, None, None))


def good(path: str) -> dict[str, Any]:
    return sample_body(ROUTES[path], size=ROUTES[path].limits.min_size, seed=None)


def rule(f: Field, route: Route, name: str) -> Any:
    return resolve(getattr(f, name), route)


def nullable(f: Field, route: Route) -> bool:
    return not f.required and resolve(f.default, route) is None


FIELDS = [(p, f) for p, r in ROUTES.items() for f in task_of(r).fields_of(r)]
INTEGERS = [(p, f) for p, f in FIELDS if f.kind is Kind.INTEGER]
NUMBERS = [(p, f) for p, f in FIELDS if f.kind is Kind.NUMBER]
TEXTS = [(p, f) for p, f in FIELDS if f.kind is Kind.TEXT]


def assert_valid(r: httpx.Response) -> None:
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable", r.text


def assert_names(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["field"] == field, error


@st.composite
def integer_inside(draw: st.DrawFn) -> tuple[str, str, int]:
    path, f = draw(st.sampled_from(INTEGERS))
    route = ROUTES[path]
    lo, hi, step = rule(f, route, "minimum"), rule(f, route, "maximum"), rule(f, route, "multiple_of") or 1
    r = f.remainder  # the grid is step * k + r (num_frames: 4k+1)
    return path, f.name, draw(st.integers(math.ceil((lo - r) / step), (hi - r) // step)) * step + r


@st.composite
def integer_outside(draw: st.DrawFn) -> tuple[str, str, int]:
    path, f = draw(st.sampled_from(INTEGERS))
    route = ROUTES[path]
    lo, hi, step = rule(f, route, "minimum"), rule(f, route, "maximum"), rule(f, route, "multiple_of") or 1
    outside = st.integers(max_value=lo - 1) | st.integers(min_value=hi + 1)
    if step > 1:  # in range but off the grid
        outside |= st.integers(lo, hi).filter(lambda v: v % step != f.remainder)
    return path, f.name, draw(outside)


@given(case=integer_inside())
@PROPERTY
def test_any_integer_inside_a_fields_range_is_accepted(post: Post, case: tuple[str, str, int]) -> None:
    path, name, value = case
    assert_valid(post(path, {**good(path), name: value}))


@given(case=integer_outside())
@PROPERTY
def test_any_integer_outside_a_fields_range_is_a_422_naming_it(post: Post, case: tuple[str, str, int]) -> None:
    path, name, value = case
    assert_names(post(path, {**good(path), name: value}), name)


def _bounds(f: Field, route: Route) -> tuple[float, float, bool]:
    exclusive = rule(f, route, "exclusive_minimum")
    lo = exclusive if exclusive is not None else rule(f, route, "minimum")
    return float(lo), float(rule(f, route, "maximum")), exclusive is not None


@st.composite
def number(draw: st.DrawFn, inside: bool) -> tuple[str, str, float]:
    path, f = draw(st.sampled_from(NUMBERS))
    lo, hi, exclusive = _bounds(f, ROUTES[path])
    finite = {"allow_nan": False, "allow_infinity": False}
    if inside:  # JSON integers are numbers too
        values = st.floats(lo, hi, exclude_min=exclusive, **finite) | st.integers(math.floor(lo) + 1, math.floor(hi))
    else:
        values = st.floats(max_value=lo, exclude_max=not exclusive, **finite) | st.floats(
            min_value=hi, exclude_min=True, **finite
        )
    return path, f.name, draw(values)


@given(case=number(inside=True))
@PROPERTY
def test_any_number_inside_a_fields_range_is_accepted(post: Post, case: tuple[str, str, float]) -> None:
    path, name, value = case
    assert_valid(post(path, {**good(path), name: value}))


@given(case=number(inside=False))
@PROPERTY
def test_any_number_outside_a_fields_range_is_a_422_naming_it(post: Post, case: tuple[str, str, float]) -> None:
    path, name, value = case
    assert_names(post(path, {**good(path), name: value}), name)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def wrong_type(f: Field, route: Route, value: Any) -> bool:
    """Whether `value` is of a JSON type that `f` never takes (strict: 5.0 is no integer, true no number)."""
    if value is None:
        return not nullable(f, route)
    if f.items is not None or f.kind is Kind.LORAS:
        return not isinstance(value, list)
    if f.kind is Kind.INTEGER:
        return not isinstance(value, int) or isinstance(value, bool)
    if f.kind is Kind.NUMBER:
        return not isinstance(value, int | float) or isinstance(value, bool)
    return not isinstance(value, str)


@st.composite
def wrongly_typed(draw: st.DrawFn) -> tuple[str, str, Any]:
    path, f = draw(st.sampled_from(FIELDS))
    value = draw(JSON.filter(lambda v: wrong_type(f, ROUTES[path], v)))
    return path, f.name, value


@given(case=wrongly_typed())
@PROPERTY
def test_a_value_of_the_wrong_json_type_is_a_422_naming_its_field(post: Post, case: tuple[str, str, Any]) -> None:
    path, name, value = case
    assert_names(post(path, {**good(path), name: value}), name)


@st.composite
def unknown_field(draw: st.DrawFn) -> tuple[str, str, Any]:
    path = draw(st.sampled_from(list(ROUTES)))
    known = set(request_model(ROUTES[path]).model_fields)
    return path, draw(st.text(min_size=1, max_size=24).filter(lambda n: n not in known)), draw(JSON)


@given(case=unknown_field())
@example(case=("/flux", "body", 1))  # also the name of FastAPI's own first location part
@PROPERTY
def test_an_unknown_field_is_a_422_naming_it(post: Post, case: tuple[str, str, Any]) -> None:
    path, name, value = case
    r = post(path, {**good(path), name: value})
    assert_names(r, name)
    assert "unknown field" in r.json()["error"]["message"]


@given(case=st.sampled_from(TEXTS), extra=st.integers(1, 300))
@PROPERTY
def test_text_over_its_character_limit_is_a_422_naming_the_field_sent(
    post: Post, case: tuple[str, Field], extra: int
) -> None:
    path, f = case
    text = "x" * (rule(f, ROUTES[path], "max_length") + extra)
    assert_names(post(path, {**good(path), f.name: text}), f.name)


def test_an_over_long_edit_instruction_is_reported_as_instruction(post: Post) -> None:
    path = "/qwen-image-edit-2511"
    limit = ROUTES[path].limits.max_prompt_chars
    r = post(path, {**good(path), "instruction": "make it night " * (limit // 10)})
    assert_names(r, "instruction")
    assert r.json()["error"]["message"].startswith("instruction:")
    assert_names(post(path, {**good(path), "instruction": "   "}), "instruction")
    assert_valid(post(path, {**good(path), "instruction": "x" * limit}))
