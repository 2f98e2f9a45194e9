"""Per-request LoRAs through the whole stack (HTTP -> api/ -> a real Triton -> the components), against plain
diffusers' `load_lora_weights` + `set_adapters` on the same tiny checkpoints (each family's reference.py): two LoRAs
stacked at their strengths with a trigger word, on every LoRA route; lora_id looked up in api.md's order; LoRAs in
other layouts (Qwen-Image-Lightning's, kohya's FLUX names) as diffusers converts them; switching A -> B -> A and
back to the base model, byte for byte; requests with different LoRAs sent together each getting their own; LoRAs
that match nothing refused. (The single sample LoRA of each route: tests/contract/test_routes.py.)"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from api.samples import sample_body
from checkpoints.source import resolve_lora
from components.lora_weights import sample_lora
from families import hooks
from registry import ROUTES, family_of
from registry.tasks import sample_lora_name
from tests.images import MAX_PIXEL_DIFF, decode, max_diff

LORA_ROUTES = [path for path, r in ROUTES.items() if r.lora]
# Each LoRA route's base route: the same checkpoint without LoRA fields.
BASE_OF = {"/flux-lora": "/flux-dev"}


def _store(stack_dirs) -> Path:  # noqa: ANN001
    return stack_dirs.loras


def _module_dir(stack_dirs, path: str) -> Path:  # noqa: ANN001
    checkpoint = ROUTES[path].checkpoint
    component = next(c for c in family_of(checkpoint).components_for(checkpoint).values() if c.lora)
    return stack_dirs.checkpoints / checkpoint / component.subfolder


@pytest.fixture(scope="module")
def second_loras(model_repository, stack_dirs) -> dict[str, str]:  # noqa: ANN001
    """route -> the store name of a second LoRA of its checkpoint: another random one, or for Qwen-Image the tiny
    Lightning LoRA in its own kohya-style layout (lora_down / lora_up / alpha), which diffusers converts."""
    names = {}
    for path in LORA_ROUTES:
        checkpoint = ROUTES[path].checkpoint
        name = f"test-second-{checkpoint}"
        if path == "/qwen-image-2512-lora":
            lightning = resolve_lora("qwen-image-lightning", "tiny", stack_dirs.checkpoints).file
            shutil.copyfile(lightning, _store(stack_dirs) / f"{name}.safetensors")
        else:
            sample_lora(_module_dir(stack_dirs, path), _store(stack_dirs) / f"{name}.safetensors", rank=2, seed=7)
        names[path] = name
    # lora_id 7: Qwen's own name first (api.md), so character-7 must not be the one served on Qwen routes.
    for path in LORA_ROUTES:
        prefix = family_of(ROUTES[path].checkpoint).lora_store_prefix
        module = _module_dir(stack_dirs, path)
        if prefix:
            sample_lora(module, _store(stack_dirs) / f"{prefix}-character-7.safetensors", seed=8)
    sample_lora(_module_dir(stack_dirs, "/flux-lora"), _store(stack_dirs) / "character-7.safetensors", seed=9)
    return names


def _body(path: str, **fields: object) -> dict:
    route = ROUTES[path]
    overrides = hooks(family_of(route.checkpoint).name, "reference", "SAMPLE_OVERRIDES").get(path, {})
    return {**sample_body(route, steps=2, size=route.limits.min_size, seed=5), **overrides, **fields}


def _reference(stack_dirs, path: str, body: dict):  # noqa: ANN001, ANN202
    (image,) = hooks(family_of(ROUTES[path].checkpoint).name, "reference", "REFERENCES")[path](
        body, stack_dirs.checkpoints
    )
    return image


@pytest.mark.parametrize("path", LORA_ROUTES)
def test_two_stacked_loras_equal_diffusers_set_adapters(client: httpx.Client, stack_dirs, second_loras, path) -> None:
    body = _body(
        path,
        lora_strength=0.8,
        loras=[{"name": second_loras[path], "scale": -0.6}],
        trigger_word="ohwx",
    )
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    first = sample_lora_name(ROUTES[path].checkpoint)
    assert r.headers["x-model"].endswith(f"+lora:{first}@0.8+lora:{second_loras[path]}@-0.6")
    served = decode(r.content)
    assert max_diff(served, _reference(stack_dirs, path, body)) <= MAX_PIXEL_DIFF
    # What makes the comparison mean something: the same request without the second LoRA is another image.
    alone = _reference(stack_dirs, path, {**body, "loras": []})
    assert max_diff(served, alone) > 8


@pytest.mark.parametrize("path", ["/flux-lora", "/qwen-image-2512-lora"])
def test_lora_id_is_looked_up_in_api_md_order(client: httpx.Client, stack_dirs, second_loras, path) -> None:
    body = {k: v for k, v in _body(path, lora_id="7").items() if k != "lora_name"}
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    prefix = family_of(ROUTES[path].checkpoint).lora_store_prefix
    expected = f"{prefix}-character-7" if prefix else "character-7"
    assert r.headers["x-model"].endswith(f"+lora:{expected}@1")
    assert max_diff(decode(r.content), _reference(stack_dirs, path, body)) <= MAX_PIXEL_DIFF


def test_switching_a_b_a_and_the_base_model_give_each_its_own_bytes(client: httpx.Client, second_loras) -> None:
    path = "/flux-lora"
    a = _body(path)
    b = _body(path, lora_name=second_loras[path])
    base = {k: v for k, v in a.items() if k != "lora_name"}

    def post(p: str, body: dict) -> bytes:
        r = client.post(p, json=body)
        assert r.status_code == 200, r.text
        return r.content

    base_1 = post(BASE_OF[path], base)
    a_1, b_1 = post(path, a), post(path, b)
    base_2 = post(BASE_OF[path], base)
    a_2 = post(path, a)
    assert a_1 == a_2 and base_1 == base_2  # from the base weights every time: nothing of B stays
    assert len({base_1, a_1, b_1}) == 3


def test_requests_with_different_loras_sent_together_each_get_their_own(api_url: str, second_loras, stack_dirs) -> None:
    path = "/flux-lora"
    bodies = {
        "a": (path, _body(path, seed=6)),
        "b": (path, _body(path, seed=6, lora_name=second_loras[path])),
        "ab": (path, _body(path, seed=6, loras=[{"name": second_loras[path], "scale": 1.5}])),
        "base": (BASE_OF[path], {k: v for k, v in _body(path, seed=6).items() if k != "lora_name"}),
    }
    with httpx.Client(base_url=api_url, timeout=300) as client:
        alone = {name: client.post(p, json=body).content for name, (p, body) in bodies.items()}
        order = [name for name in bodies for _ in range(2)]
        with ThreadPoolExecutor(len(order)) as pool:
            together = list(pool.map(lambda n: client.post(bodies[n][0], json=bodies[n][1]), order))
    assert len(set(alone.values())) == len(bodies)
    for name, r in zip(order, together, strict=True):
        assert r.status_code == 200, r.text
        assert r.content == alone[name], name


def test_loras_that_match_nothing_in_the_model_are_422_naming_the_field(
    client: httpx.Client, stack_dirs, second_loras
) -> None:
    store = _store(stack_dirs)
    save_file(
        {
            "transformer.no_such_block.to_q.lora_A.weight": torch.zeros(2, 8),
            "transformer.no_such_block.to_q.lora_B.weight": torch.zeros(8, 2),
        },
        str(store / "test-matches-nothing.safetensors"),
    )
    r = client.post("/flux-lora", json=_body("/flux-lora", lora_name="test-matches-nothing"))
    assert (r.status_code, r.json()["error"]["field"]) == (422, "lora_name"), r.text
    # Another family's LoRA: Z-Image's attention names are not FLUX's.
    foreign = sample_lora_name(ROUTES["/z-image-lora"].checkpoint)
    r = client.post("/flux-lora", json=_body("/flux-lora", loras=[{"name": foreign, "scale": 1.0}]))
    assert (r.status_code, r.json()["error"]["field"]) == (422, "loras[0].name"), r.text
    assert client.post("/flux-lora", json=_body("/flux-lora")).status_code == 200  # and the route serves on


def _kohya_flux_lora(module_dir: Path, out: Path, rank: int = 2) -> Path:
    """A LoRA in kohya's layout of the original FLUX names (fused img/txt QKV, lora_down / lora_up, an alpha that is
    not the rank), the layout most FLUX character LoRAs are trained in; diffusers splits and renames it."""
    import json

    config = json.loads((module_dir / "config.json").read_text())
    inner = config["attention_head_dim"] * config["num_attention_heads"]
    g = torch.Generator().manual_seed(11)
    tensors = {}
    for stream in ("img", "txt"):
        for name, rows in ((f"{stream}_attn_qkv", 3 * inner), (f"{stream}_attn_proj", inner)):
            key = f"lora_unet_double_blocks_0_{name}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, inner, generator=g) * 0.4
            tensors[f"{key}.lora_up.weight"] = torch.randn(rows, rank, generator=g) * 0.4
            tensors[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    save_file(tensors, str(out))
    return out


def test_a_kohya_layout_lora_is_served_as_diffusers_converts_it(client: httpx.Client, stack_dirs) -> None:
    path = "/flux-lora"
    _kohya_flux_lora(_module_dir(stack_dirs, path), _store(stack_dirs) / "test-kohya-flux.safetensors")
    body = _body(path, lora_name="test-kohya-flux", lora_strength=1.2)
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    served = decode(r.content)
    assert max_diff(served, _reference(stack_dirs, path, body)) <= MAX_PIXEL_DIFF
    base = {k: v for k, v in body.items() if k not in ("lora_name", "lora_strength")}
    assert max_diff(served, decode(client.post(BASE_OF[path], json=base).content)) > 8
