"""The Qwen-Image routes through the whole stack (HTTP -> api/ -> a real Triton -> ONNX transformer/VAE, Qwen2.5-VL in
torch), where Qwen-Image differs from the other families: the fast route's merged Lightning LoRA, aspect-ratio
presets, an edit's `denoise` below 1, and true CFG sent to Triton as one batch of two. Each is
compared with the plain diffusers pipelines on the same tiny checkpoints, inputs and seed. (Every route at its
defaults, the edit with a reference image: tests/contract/test_routes.py.)"""

from __future__ import annotations

import io
import json
import urllib.request

import httpx
import numpy as np
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline
from PIL import Image

from families.qwen_image.pipeline import edit_start
from families.qwen_image.reference import edit_size, pipeline, text_to_image
from tests.images import MAX_PIXEL_DIFF, decode, gradient, max_diff, png_b64
from tests.stack_fixtures import STACK_DIR

PROMPT = "a lighthouse on a cliff at dawn"
SIZE = {"width": 256, "height": 256}


def test_fast_route_serves_the_merged_lora(client: httpx.Client) -> None:
    """Same seed, same steps, CFG off on both: only the merged Lightning LoRA (and its sampler) tells them apart."""
    body = {"prompt": PROMPT, "seed": 8, "steps": 4, "cfg": 1.0, **SIZE}
    fast, base = client.post("/qwen-image-2512-fast", json=body), client.post("/qwen-image-2512", json=body)
    assert fast.status_code == base.status_code == 200
    assert max_diff(decode(fast.content), decode(base.content)) > 10
    # One checkpoint folder; the fast one is served, and named, with the LoRA merged into its transformer.
    assert base.headers["x-model"] == "local:qwen-image-2512"
    assert fast.headers["x-model"] == "local:qwen-image-2512-fast+local:qwen-image-lightning"


def test_aspect_ratio_preset_sets_the_size(client: httpx.Client) -> None:
    r = client.post("/qwen-image-2512-fast", json={"prompt": PROMPT, "aspect_ratio": "16:9", "steps": 2})
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (1664, 928)


def test_edit_denoise_starts_from_the_source(client: httpx.Client, stack_dirs) -> None:
    source = gradient(192, 192)
    # 2 steps at denoise 0.5: the last one of the schedule, from the noised source (the edit runs ~1 MP with CFG).
    body = {"instruction": "add a moon", "source_image": png_b64(source), "denoise": 0.5, "steps": 2, "seed": 5}
    r = client.post("/qwen-image-edit-2511", json=body)
    assert r.status_code == 200, r.text
    pipe = pipeline("qwen-image-edit-2511", QwenImageEditPlusPipeline, stack_dirs.checkpoints)
    width, height = edit_size(source)
    generator = torch.Generator("cpu").manual_seed(5)
    start = edit_start(pipe, source, width, height, steps=2, denoise=0.5, num_images=1, generator=generator)
    assert start["num_inference_steps"] == 1 and len(start["sigmas"]) == 1  # the last half of the schedule
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


def _executions(triton, model: str) -> int:  # noqa: ANN001 - the session's TritonServer
    with urllib.request.urlopen(f"{triton.http_url}/v2/models/{model}/stats", timeout=5) as r:
        return int(json.load(r)["model_stats"][0]["execution_count"])


def _equally_long_negative() -> str:
    """A negative prompt with the prompt's token count (and other words), so the CFG halves can share a batch."""
    tokenizer = pipeline("qwen-image-2512", QwenImagePipeline, STACK_DIR / "checkpoints").tokenizer
    count = len(tokenizer(PROMPT).input_ids)
    candidates = [f"a {w} on a cliff at dawn" for w in ("castle", "tower", "house", "tree", "ship", "barn", "wall")]
    return next(c for c in candidates if c != PROMPT and len(tokenizer(c).input_ids) == count)


@pytest.mark.parametrize("same_length", [True, False])
def test_cfg_passes_go_to_triton_as_one_batch(client: httpx.Client, triton, stack_dirs, same_length: bool) -> None:  # noqa: ANN001
    """True CFG, 4 steps. Prompts of one token count: the first step learns the pair (two requests), the next three
    send cond + uncond as one batch of two: 5 transformer requests instead of 8. Of different counts: 8 (no padding,
    see QwenTransformerProxy). Either way the image equals diffusers' two-pass one."""
    negative = _equally_long_negative() if same_length else "blurry, low quality, watermark, extra fingers"
    before = _executions(triton, "qwen_image_transformer")
    body = {"prompt": PROMPT, "negative_prompt": negative, "steps": 4, "seed": 12, **SIZE}
    r = client.post("/qwen-image-2512", json=body)
    assert r.status_code == 200, r.text
    assert _executions(triton, "qwen_image_transformer") - before == (5 if same_length else 8)
    (expected,) = text_to_image("/qwen-image-2512", body, stack_dirs.checkpoints)
    assert max_diff(decode(r.content), expected) <= MAX_PIXEL_DIFF
