"""The Qwen-Image routes through the whole stack (HTTP -> api/ -> a real Triton -> ONNX transformer/VAE, Qwen2.5-VL in
torch), compared with the plain diffusers pipelines on the same tiny checkpoints, inputs and seed."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from functools import cache
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditInpaintPipeline,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
)
from PIL import Image

from checkpoints.qwen import processor_override
from checkpoints.source import resolve, resolve_lora
from model_repository.pipelines import edit_size, edit_start
from registry import CHECKPOINTS, LORAS, ROUTES
from stack.local import REPO_ROOT

ROOT = REPO_ROOT / ".cache" / "test-stack" / "checkpoints"
PROMPT = "a lighthouse on a cliff at dawn"
SIZE = {"width": 256, "height": 256}
MAX_PIXEL_DIFF = 2  # ONNX Runtime vs torch float noise only


@cache
def reference(checkpoint: str, cls: type) -> Any:
    """The plain diffusers pipeline a user would load for `checkpoint` (fast: Lightning LoRA fused, its sampler)."""
    path = resolve(checkpoint, "tiny", ROOT).path
    pipe = cls.from_pretrained(path, **(processor_override(path) if cls is not QwenImagePipeline else {}))
    pipe.set_progress_bar_config(disable=True)
    if checkpoint == "qwen-image-2512-fast":
        lora = LORAS["qwen-image-lightning"]
        pipe.load_lora_weights(resolve_lora(lora.key, "tiny", ROOT).file.parent, weight_name=lora.weight_name)
        pipe.fuse_lora(lora_scale=lora.scale)
        pipe.unload_lora_weights()
        overrides = dict(CHECKPOINTS[checkpoint].scheduler_overrides)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **overrides)
    return pipe


def run_reference(route: str, seed: int, **kwargs: Any) -> np.ndarray:
    r = ROUTES[route]
    cls = {"/qwen-image-edit-2511": QwenImageEditPlusPipeline, "/qwen-image-inpaint-2511": QwenImageEditInpaintPipeline}
    pipe = reference(r.checkpoint, cls.get(route, QwenImagePipeline))
    args: dict[str, Any] = {"num_inference_steps": r.steps, "true_cfg_scale": r.cfg, "max_sequence_length": 512}
    if r.cfg > 1:
        args["negative_prompt"] = ""  # the served route runs CFG against an empty negative prompt when none is sent
    args |= kwargs
    out = pipe(generator=torch.Generator("cpu").manual_seed(seed), **args)
    return np.asarray(out.images[0].convert("RGB"))


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(width: int, height: int, phase: float = 0.0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(phase + x / 9.0)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


@pytest.mark.parametrize(("route", "steps"), [("/qwen-image-2512", 3), ("/qwen-image-2512-fast", None)])
def test_text_to_image_equals_diffusers(client: httpx.Client, route: str, steps: int | None) -> None:
    body: dict[str, Any] = {"prompt": PROMPT, "seed": 4321, **SIZE}
    if steps:
        body["steps"] = steps
    r = client.post(route, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "4321"
    served = decode(r.content)
    expected = run_reference(route, 4321, prompt=PROMPT, **SIZE, **({"num_inference_steps": steps} if steps else {}))
    assert served.shape == (256, 256, 3)
    assert max_diff(served, expected) <= MAX_PIXEL_DIFF
    assert served.std() > 1.0


def test_fast_route_serves_the_merged_lora(client: httpx.Client) -> None:
    """Same seed, same steps, CFG off on both: only the merged Lightning LoRA (and its sampler) tells them apart."""
    body = {"prompt": PROMPT, "seed": 8, "steps": 4, "cfg": 1.0, **SIZE}
    fast, base = client.post("/qwen-image-2512-fast", json=body), client.post("/qwen-image-2512", json=body)
    assert fast.status_code == base.status_code == 200
    assert max_diff(decode(fast.content), decode(base.content)) > 10
    assert fast.headers["x-model"] == base.headers["x-model"]  # one checkpoint folder; the LoRA is in the engine


def test_aspect_ratio_preset_sets_the_size(client: httpx.Client) -> None:
    r = client.post("/qwen-image-2512-fast", json={"prompt": PROMPT, "aspect_ratio": "16:9", "steps": 1})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (1664, 928)


def test_same_seed_same_bytes(client: httpx.Client) -> None:
    body = {"prompt": PROMPT, "seed": 3, "steps": 2, **SIZE}
    first, second = client.post("/qwen-image-2512", json=body), client.post("/qwen-image-2512", json=body)
    assert first.status_code == second.status_code == 200 and first.content == second.content


def test_edit_with_a_reference_image_equals_diffusers(client: httpx.Client) -> None:
    source, extra = gradient(256, 192), gradient(160, 224, phase=1.0)
    body = {
        "instruction": "make the sky purple",
        "source_image": png_b64(source),
        "reference_images": [png_b64(extra)],
        "denoise": 1.0,
        "steps": 2,
        "seed": 11,
    }
    r = client.post("/qwen-image-edit-2511", json=body)
    assert r.status_code == 200, r.text
    served = decode(r.content)
    pipe = reference("qwen-image-edit-2511", QwenImageEditPlusPipeline)
    width, height = edit_size(pipe, source)  # the source's aspect at ~1 MP (diffusers' own calculate_dimensions)
    assert served.shape == (height, width, 3) and width > height
    expected = run_reference(
        "/qwen-image-edit-2511",
        11,
        image=[source, extra],
        prompt=body["instruction"],
        num_inference_steps=2,
        width=width,
        height=height,
    )
    assert max_diff(served, expected) <= MAX_PIXEL_DIFF
    again = client.post("/qwen-image-edit-2511", json=body)
    assert again.status_code == 200 and again.content == r.content  # same inputs and seed: the same bytes


def test_edit_denoise_starts_from_the_source(client: httpx.Client) -> None:
    source = gradient(192, 192)
    body = {"instruction": "add a moon", "source_image": png_b64(source), "denoise": 0.5, "steps": 4, "seed": 5}
    r = client.post("/qwen-image-edit-2511", json=body)
    assert r.status_code == 200, r.text
    pipe = reference("qwen-image-edit-2511", QwenImageEditPlusPipeline)
    width, height = edit_size(pipe, source)
    generator = torch.Generator("cpu").manual_seed(5)
    start = edit_start(pipe, source, width, height, steps=4, denoise=0.5, num_images=1, generator=generator)
    assert start["num_inference_steps"] == 2 and len(start["sigmas"]) == 2  # the last half of the schedule
    out = pipe(
        image=[source],
        prompt=body["instruction"],
        negative_prompt="",
        true_cfg_scale=4.0,
        width=width,
        height=height,
        max_sequence_length=512,
        generator=generator,
        **start,
    )
    assert max_diff(decode(r.content), np.asarray(out.images[0].convert("RGB"))) <= MAX_PIXEL_DIFF
    full = client.post("/qwen-image-edit-2511", json={**body, "denoise": 1.0})
    assert max_diff(decode(full.content), decode(r.content)) > 10


def test_inpaint_equals_diffusers(client: httpx.Client) -> None:
    source = gradient(256, 256)
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))  # white = repaint
    body = {
        "prompt": "a red door",
        "source_image": png_b64(source),
        "mask_image": png_b64(mask),
        "steps": 2,
        "seed": 21,
    }
    r = client.post("/qwen-image-inpaint-2511", json=body)
    assert r.status_code == 200, r.text
    expected = run_reference(
        "/qwen-image-inpaint-2511",
        21,
        image=source,
        mask_image=mask,
        prompt="a red door",
        num_inference_steps=2,
        strength=1.0,
    )
    assert max_diff(decode(r.content), expected) <= MAX_PIXEL_DIFF
    again = client.post("/qwen-image-inpaint-2511", json=body)
    assert again.status_code == 200 and again.content == r.content  # same inputs and seed: the same bytes


def test_mask_of_another_size_is_422(client: httpx.Client) -> None:
    body = {
        "prompt": "a red door",
        "source_image": png_b64(gradient(256, 256)),
        "mask_image": png_b64(Image.new("L", (128, 128), 255)),
    }
    r = client.post("/qwen-image-inpaint-2511", json=body)
    assert r.status_code == 422 and r.json()["error"]["field"] == "mask_image", r.text


def _executions(triton, model: str) -> int:  # noqa: ANN001 - the session's TritonServer
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/stats", timeout=5) as r:
        return int(json.load(r)["model_stats"][0]["execution_count"])


def _equally_long_negative() -> str:
    """A negative prompt with the prompt's token count (and other words), so the CFG halves can share a batch."""
    tokenizer = reference("qwen-image-2512", QwenImagePipeline).tokenizer
    count = len(tokenizer(PROMPT).input_ids)
    candidates = [f"a {w} on a cliff at dawn" for w in ("castle", "tower", "house", "tree", "ship", "barn", "wall")]
    return next(c for c in candidates if c != PROMPT and len(tokenizer(c).input_ids) == count)


@pytest.mark.parametrize("same_length", [True, False])
def test_cfg_passes_go_to_triton_as_one_batch(client: httpx.Client, triton, same_length: bool) -> None:  # noqa: ANN001
    """True CFG, 4 steps. Prompts of one token count: the first step learns the pair (two requests), the next three
    send cond + uncond as one batch of two: 5 transformer requests instead of 8. Of different counts: 8 (no padding,
    see QwenTransformerProxy). Either way the image equals diffusers' two-pass one."""
    negative = _equally_long_negative() if same_length else "blurry, low quality, watermark, extra fingers"
    before = _executions(triton, "qwen_image_transformer")
    body = {"prompt": PROMPT, "negative_prompt": negative, "steps": 4, "seed": 12, **SIZE}
    r = client.post("/qwen-image-2512", json=body)
    assert r.status_code == 200, r.text
    assert _executions(triton, "qwen_image_transformer") - before == (5 if same_length else 8)
    expected = run_reference(
        "/qwen-image-2512", 12, prompt=PROMPT, negative_prompt=negative, num_inference_steps=4, **SIZE
    )
    assert max_diff(decode(r.content), expected) <= MAX_PIXEL_DIFF
