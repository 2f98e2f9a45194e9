"""What a diffusers user would run for a Qwen-Image route's request: the plain QwenImagePipeline,
QwenImageEditPlusPipeline or QwenImageEditInpaintPipeline on the same tiny checkpoint, inputs and seed (for the
fast route: the Lightning LoRA fused as diffusers fuses it, and its sampler), with api.md's meaning of each field
written out by hand, so the contract tests (tests/contract/) can hold served images against it."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditInpaintPipeline,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
)
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import VAE_IMAGE_SIZE, calculate_dimensions
from PIL import Image

from checkpoints.source import resolve, resolve_lora
from loras import reference as lora_reference
from registry import CHECKPOINTS, LORAS, ROUTES

MAX_SEQUENCE_LENGTH = 512


def processor_override(folder: Path) -> dict[str, Any]:
    """from_pretrained kwargs that let the edit pipelines load `folder` in an environment without torchvision
    (model_repository/processors.py says why); {} where torchvision exists."""
    from transformers import Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    from model_repository.processors import load_processor

    if is_torchvision_available():
        return {}
    return {"processor": load_processor(Qwen2VLProcessor, Path(folder), "processor")}


@cache
def pipeline(checkpoint: str, cls: type, root: Path) -> Any:
    """The plain pipeline a user would load for `checkpoint` (fast: Lightning LoRA fused, its sampler)."""
    path = resolve(checkpoint, "tiny", root).path
    pipe = cls.from_pretrained(path, **(processor_override(path) if cls is not QwenImagePipeline else {}))
    pipe.set_progress_bar_config(disable=True)
    if checkpoint == "qwen-image-2512-fast":
        lora = LORAS["qwen-image-lightning"]
        pipe.load_lora_weights(resolve_lora(lora.key, "tiny", root).file.parent, weight_name=lora.weight_name)
        pipe.fuse_lora(lora_scale=lora.scale)
        pipe.unload_lora_weights()
        overrides = dict(CHECKPOINTS[checkpoint].scheduler_overrides)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **overrides)
    return pipe


PREFIX = "qwen"  # api.md: a lora_id is looked up as qwen-character-{id} first


def image_of(value: str) -> Image.Image:
    """A request's base64 image (an optional data: prefix) as the RGB picture a user holds."""
    return Image.open(io.BytesIO(base64.b64decode(value.split(",")[-1]))).convert("RGB")


def edit_size(source: Image.Image) -> tuple[int, int]:
    """(width, height) of an edit's output: the source's aspect at the edit pipeline's working area."""
    return calculate_dimensions(VAE_IMAGE_SIZE, source.width / source.height)


def _common(route: str, body: Mapping[str, Any]) -> dict[str, Any]:
    r = ROUTES[route]
    cfg = body.get("cfg", r.cfg)
    kwargs: dict[str, Any] = {
        "num_inference_steps": body.get("steps", r.steps),
        "num_images_per_prompt": body.get("num_images", 1),
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "true_cfg_scale": cfg,
        "generator": torch.Generator("cpu").manual_seed(body["seed"]),
    }
    if cfg > 1:  # true CFG, against an empty negative prompt when none was sent
        kwargs["negative_prompt"] = body.get("negative_prompt") or ""
    return kwargs


def _pixels(out: Any) -> list[np.ndarray]:
    return [np.asarray(im.convert("RGB")) for im in out.images]


def text_to_image(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    r = ROUTES[route]
    width, height = body.get("width", r.width), body.get("height", r.height)
    for name, w, h in r.aspect_ratios:
        if body.get("aspect_ratio") == name:
            width, height = w, h
    pipe = pipeline(r.checkpoint, QwenImagePipeline, Path(root))
    with lora_reference.adapters(pipe, body, lora_reference.store_of(root), PREFIX):
        out = pipe(prompt=lora_reference.prompt_of(body), width=width, height=height, **_common(route, body))
    return _pixels(out)


def edit(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    """denoise 1 only: below it the edit starts from the noised source through our own sigmas and latents
    (families/qwen_image/pipeline.py), which the family's own test checks."""
    if body.get("denoise", ROUTES[route].denoise) != 1.0:
        raise ValueError("the plain edit pipeline has no denoise below 1: send denoise 1.0")
    source = image_of(body["source_image"])
    width, height = edit_size(source)
    images = [source, *(image_of(v) for v in body.get("reference_images") or ())]
    pipe = pipeline(ROUTES[route].checkpoint, QwenImageEditPlusPipeline, Path(root))
    prompt = lora_reference.prompt_of(body, "instruction")
    with lora_reference.adapters(pipe, body, lora_reference.store_of(root), PREFIX):
        out = pipe(image=images, prompt=prompt, width=width, height=height, **_common(route, body))
    return _pixels(out)


def inpaint(route: str, body: Mapping[str, Any], root: Path) -> list[np.ndarray]:
    r = ROUTES[route]
    mask = Image.open(io.BytesIO(base64.b64decode(body["mask_image"].split(",")[-1]))).convert("L")
    pipe = pipeline(r.checkpoint, QwenImageEditInpaintPipeline, Path(root))
    out = pipe(
        image=image_of(body["source_image"]),
        mask_image=mask,
        prompt=body["prompt"],
        strength=body.get("denoise", r.denoise),
        **_common(route, body),
    )
    return _pixels(out)


def _of(run: Callable, route: str) -> Callable[[Mapping[str, Any], Path], list[np.ndarray]]:
    return lambda body, root: run(route, body, root)


# Route -> (request body, tiny checkpoints root) -> the images plain diffusers makes of it.
REFERENCES = {
    "/qwen-image-2512": _of(text_to_image, "/qwen-image-2512"),
    "/qwen-image-2512-fast": _of(text_to_image, "/qwen-image-2512-fast"),
    "/qwen-image-edit-2511": _of(edit, "/qwen-image-edit-2511"),
    "/qwen-image-inpaint-2511": _of(inpaint, "/qwen-image-inpaint-2511"),
    "/qwen-image-2512-lora": _of(text_to_image, "/qwen-image-2512-lora"),
    "/qwen-image-edit-lora": _of(edit, "/qwen-image-edit-lora"),
}


def _gradient_png(width: int, height: int) -> str:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 9.0)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# What the contract tests set on a route's sample request: what the plain call needs to express it (an edit's
# denoise 1), and what this family does beyond the sample (a multi-image edit: a reference of another aspect). The
# multi-image edit runs without CFG, which halves its 12k-token steps on a CPU; the edit with CFG is the family's
# own denoise test (tests/test_serving.py).
SAMPLE_OVERRIDES = {
    "/qwen-image-edit-2511": {"denoise": 1.0, "cfg": 1.0, "reference_images": [_gradient_png(160, 224)]},
    # Without CFG (its ~1 MP edit pipeline costs a minute on a CPU otherwise): the served CFG path is the edit
    # route's too, which tests/test_serving.py::test_edit_denoise_starts_from_the_source runs with CFG.
    "/qwen-image-inpaint-2511": {"cfg": 1.0},
    # The plain call's denoise, and no CFG for time: the edit route above runs the multi-image edit.
    "/qwen-image-edit-lora": {"denoise": 1.0, "cfg": 1.0},
}
