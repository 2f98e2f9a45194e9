"""Every route through the whole stack (HTTP -> api/ -> a real Triton -> the components): its sample request at a
few steps answers what plain diffusers makes of the same request on the same tiny checkpoint (the family folder's
reference.py), the same bytes when asked again, other bytes for another seed, a 422 naming the field for text over
the text encoder's token limit, and /v1/models names its loaded checkpoint. Every refused route (registry
UnsupportedRoute) answers 501 with its message for any body, and says so in the OpenAPI document."""

from __future__ import annotations

from functools import cache
from typing import Any

import httpx
import pytest

from api.samples import sample_body
from families import hooks
from registry import ROUTES, UNSUPPORTED, family_of, merged_loras_of, task_of
from tests.images import MAX_PIXEL_DIFF, decode, max_diff

STEPS = 2
DEFAULT_MIME = {"images": "image/png", "video": "image/webp"}  # api.md: PNG images, animated WebP videos
PATHS = list(ROUTES)


def _family(path: str) -> str:
    return family_of(ROUTES[path].checkpoint).name


@cache
def body_of(path: str, seed: int = 31) -> dict[str, Any]:
    """The route's sample request at its smallest size, a few steps, and what its reference needs set."""
    route = ROUTES[path]
    overrides = hooks(_family(path), "reference", "SAMPLE_OVERRIDES").get(path, {})
    return {**sample_body(route, steps=STEPS, size=route.limits.min_size, seed=seed), **overrides}


@pytest.mark.parametrize("path", PATHS)
def test_served_equals_the_reference_and_repeats_its_bytes(client: httpx.Client, stack_dirs, path: str) -> None:
    body = body_of(path)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == DEFAULT_MIME[task_of(ROUTES[path]).output.kind]
    assert r.headers["x-seed"] == str(body["seed"])
    assert r.headers["x-model"].split("+")[0] == f"local:{ROUTES[path].checkpoint}"  # its key, never a path
    served = decode(r.content)
    reference = hooks(_family(path), "reference", "REFERENCES")[path]
    (expected,) = reference(body, stack_dirs.checkpoints)
    assert max_diff(served, expected) <= MAX_PIXEL_DIFF
    assert served.std() > 1.0  # a blank image would pass a loose diff against a broken reference
    again = client.post(path, json=body)
    assert again.status_code == 200 and again.content == r.content  # same inputs and seed: the same bytes


@pytest.mark.parametrize("path", PATHS)
def test_the_fewest_steps_and_the_least_denoise_give_an_image(client: httpx.Client, stack_dirs, path: str) -> None:
    """min_steps (registry) runs, as plain diffusers does; an edit's smallest denoise still runs one step."""
    route = ROUTES[path]
    body = {**body_of(path), "steps": route.limits.min_steps}
    if route.limits.min_steps != STEPS:  # at STEPS, test_served_equals_the_reference_... has run it already
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        (expected,) = hooks(_family(path), "reference", "REFERENCES")[path](body, stack_dirs.checkpoints)
        assert max_diff(decode(r.content), expected) <= MAX_PIXEL_DIFF and decode(r.content).std() > 1.0
    if any(f.name == "denoise" for f in task_of(route).fields_of(route)):
        r = client.post(path, json={**body, "denoise": 0.01})
        assert r.status_code == 200, r.text
        assert decode(r.content).std() > 1.0  # not the black image of a NaN schedule


@pytest.mark.parametrize("path", [p for p in PATHS if not task_of(ROUTES[p]).media])
def test_another_seed_gives_other_bytes(client: httpx.Client, path: str) -> None:
    first, other = client.post(path, json=body_of(path)), client.post(path, json=body_of(path, seed=32))
    assert first.status_code == other.status_code == 200
    assert first.content != other.content


TOKEN_FIELDS = [(p, f.name) for p in PATHS for f in task_of(ROUTES[p]).fields_of(ROUTES[p]) if f.token_limit]


@pytest.mark.parametrize(("path", "field"), TOKEN_FIELDS)
def test_text_over_the_token_limit_is_a_422_naming_it(client: httpx.Client, path: str, field: str) -> None:
    # Within the route's character limit, but far over any of our text encoders' token limits (<= 512).
    text = " ".join(f"w{i}" for i in range(600))
    assert len(text) <= ROUTES[path].limits.max_prompt_chars
    r = client.post(path, json={**body_of(path), "cfg": 2.0, field: text})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_models_name_every_loaded_checkpoint(client: httpx.Client) -> None:
    assert client.get("/ready").status_code == 200
    rows = {row["path"]: row for row in client.get("/v1/models").json()["data"]}
    assert set(rows) == set(ROUTES)
    for path, route in ROUTES.items():
        assert rows[path]["loaded"] is True and rows[path]["checkpoint"] == route.checkpoint
        # The registry key of the tiny checkpoint that serves it, and of each LoRA merged into it: no server path.
        merged = merged_loras_of(route.checkpoint)
        assert rows[path]["model"] == "+".join([f"local:{route.checkpoint}", *(f"local:{m}" for m in merged)])


# Bodies a refused route must not even look at: none, not JSON, JSON of the wrong type, a generating route's body.
ANY_BODY = [b"", b"{not json", b"[1, 2]", b'{"prompt": "a portrait", "seed": -1, "unknown": true}']


@pytest.mark.parametrize("path", list(UNSUPPORTED))
def test_refused_routes_answer_501_for_any_body(client: httpx.Client, path: str) -> None:
    for body in ANY_BODY:
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 501, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"code", "message"} and error["code"] == "unsupported"
        assert error["message"].startswith(UNSUPPORTED[path].message)  # then the request id, as on every 5xx
    documented = client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    assert "501" in documented and "200" not in documented
