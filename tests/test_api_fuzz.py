"""Schemathesis against the live API in front of the real Triton stack (tests/stack_fixtures.py: tiny models): cases
generated from /openapi.json for every generating route, schema-valid ones and invalid ones, each answer checked
against what the schema documents (status, content-type, body schema, headers), invalid bodies refused with a 4xx,
no 5xx, and every error the one envelope with the code of its status.

A hook keeps the valid cases cheap (Cheap): sizes at the route's minimum, 1 or 2 steps, one image, no preset sizes,
media strings cut short, and real images in only a few edit bodies.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.errors import CODES
from api.samples import media_base64, sample_body, sample_pixels
from api.schemas import request_model
from registry import ROUTES, Kind, Route, SampleMedia, task_of

# Cases per route: schema-valid ones run real (small) generations, invalid ones are refused before Triton.
POSITIVE, NEGATIVE = 10, 40
MIN_CASES = 600
BUDGET_S = 360.0  # on 2 cores, the stack already up
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


def _valid_int(value: Any, lo: int, hi: int, step: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi and value % step == 0


class Cheap:
    """The map_body hook: a body with its costly valid values made cheap. Invalid values stay as drawn, so a negative
    case stays negative and a positive one positive. An edit or inpaint generation takes ~12 s here whatever the
    image size, so only the first IMAGES valid bodies of such a route get real images; the others keep the random
    strings schemathesis drew (a 422 before Triton)."""

    IMAGES = 2

    def __init__(self) -> None:
        self.images_left = {path: self.IMAGES for path in ROUTES}

    def __call__(self, route: Route, body: Any) -> Any:
        if not isinstance(body, dict):
            return body
        spec, limits = task_of(route), route.limits
        for f in spec.fields_of(route):  # 3.0 is an integer to JSON Schema, not to the API (strict): send 3
            value = body.get(f.name)
            if f.kind is Kind.INTEGER and isinstance(value, float) and value.is_integer():
                body[f.name] = int(value)
        preset = body.get("aspect_ratio")
        if spec.size_fields and not set(spec.size_fields) & set(body) and preset in _presets(route):
            del body["aspect_ratio"]  # alone, a valid preset is a full-size generation; with width/height a 422
        for name in spec.size_fields:
            if name not in body or _valid_int(body[name], limits.min_size, limits.max_size, limits.size_multiple):
                body[name] = limits.min_size
        lo = getattr(limits, "min_steps", 1)
        steps = body.get("steps", lo)  # absent is the route's default: up to 50
        if _valid_int(steps, lo, limits.max_steps):
            body["steps"] = min(max(lo, 1 + steps % 2), limits.max_steps)
        if _valid_int(body.get("num_images"), 1, limits.max_num_images):
            body["num_images"] = 1
        for name in ("num_frames", "length"):  # a video's frames, in the schema's range: the fewest
            # (the schema cannot say 4k+1, so its valid draws are mostly 422s; tests/test_api_validation and
            # families/wan/tests check that rule)
            if _valid_int(body.get(name), limits.min_frames, limits.max_frames):
                body[name] = limits.min_frames
        if route.lora and _valid(route, body):  # a drawn name is a 404 (not in the store): the sample LoRA instead
            sample = sample_body(route)["lora_name"]
            if any(isinstance(body.get(k), str) and body[k] for k in ("lora_name", "lora_id")):
                body.pop("lora_id", None)
                body["lora_name"] = sample
            items = body.get("loras")
            for item in items if isinstance(items, list) else ():  # a negative case may send any JSON value
                if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
                    item["name"] = sample
        for f in spec.media:  # huge random strings cost the transfer only: cut them short
            value = body.get(f.name)
            if isinstance(value, str) and len(value) > 64:
                body[f.name] = value[:64]
            elif isinstance(value, list):
                body[f.name] = [v[:64] if isinstance(v, str) else v for v in value]
        if spec.media and self.images_left[route.path] > 0 and _valid(route, body):
            self.images_left[route.path] -= 1
            sample = sample_body(route, size=limits.min_size, seed=None)
            for f in spec.media:
                if isinstance(body.get(f.name), list):
                    item = media_base64(sample_pixels(SampleMedia(limits.min_size, limits.min_size), f.kind), f.kind)
                    body[f.name] = [item for _ in body[f.name]]
                elif f.name in body and f.name in sample:  # a valid null keeps its null
                    body[f.name] = sample[f.name]
        return body


def _presets(route: Route) -> tuple[str, ...]:
    spec = task_of(route)
    return next((f.choices_of(route) for f in spec.fields_of(route) if f.name == "aspect_ratio"), ())


def _valid(route: Route, body: dict) -> bool:
    try:
        request_model(route).model_validate_json(json.dumps(body))
    except (ValueError, TypeError):
        return False
    return True


def assert_envelope(response: Any) -> None:
    """Every error is `{"error": {"code", "message", "field"?}}` with the code of its status."""
    status = response.status_code
    if status < 400:
        return
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis: each header as a list of values
    assert content_type.startswith("application/json"), response.headers
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == CODES[status] and isinstance(error["message"], str) and error["message"], error
    assert set(error) <= {"code", "message", "field"}, error
    assert "Traceback" not in error["message"]


def run_cases(operation: schemathesis.APIOperation, mode: GenerationMode, examples: int, statuses: Counter) -> int:
    """Runs up to `examples` cases of one operation; returns how many ran, counting (path, status) of each answer."""
    ran = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking against a live stack: the failing case is reported as drawn
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: schemathesis.Case) -> None:
        nonlocal ran
        ran += 1
        response = case.call_and_validate(checks=CHECKS, timeout=120)
        statuses[(operation.path, response.status_code)] += 1
        try:
            assert_envelope(response)
        except AssertionError as e:
            raise AssertionError(f"{e}\nreproduce: {case.as_curl_command()}") from None

    fuzz()
    return ran


def test_generating_routes_under_fuzzing(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json", timeout=30)
    cheap = Cheap()

    @schema.hook("map_body")
    def _cheap(ctx: schemathesis.HookContext, body: Any) -> Any:
        return cheap(ROUTES[ctx.operation.path], body)

    counts: dict[tuple[str, str], int] = {}
    statuses: Counter[tuple[str, int]] = Counter()
    start = time.monotonic()
    for path, route in ROUTES.items():
        # The route's sample request, checked like the drawn ones: each route reaches its model at least once,
        # whatever the draws (few random bodies of a LoRA edit route are valid).
        operation = schema[path]["POST"]
        sample = sample_body(route, steps=route.limits.min_steps, size=route.limits.min_size)
        response = operation.Case(body=cheap(route, sample), media_type="application/json").call_and_validate(
            checks=CHECKS, timeout=120
        )
        statuses[(path, response.status_code)] += 1
        assert_envelope(response)
    for path in ROUTES:
        # A valid clip costs several images: fewer valid video cases (the schema is the text-to-image one's plus
        # the frame fields).
        positive = POSITIVE // 2 if task_of(ROUTES[path]).output.kind == "video" else POSITIVE
        for mode, examples in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, NEGATIVE)):
            counts[(path, mode.value)] = run_cases(schema[path]["POST"], mode, examples, statuses)
    elapsed = time.monotonic() - start
    total = sum(counts.values())
    by_status = Counter(status for _, status in statuses.elements())
    print(f"schemathesis: {total} cases in {elapsed:.0f} s; statuses {dict(sorted(by_status.items()))}")
    assert total >= MIN_CASES, counts
    unreached = [path for path in ROUTES if not statuses[(path, 200)]]
    assert not unreached, (unreached, statuses)  # valid cases of every route reached its model
    assert elapsed < BUDGET_S
