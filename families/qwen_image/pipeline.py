"""The edit pipeline's call: QwenImageEditPlusPipeline takes no `strength`, sizes its output after the *last* image
and starts from pure noise. The edit task's `denoise` (the pipeline keyword `strength`) therefore enters through the
pipeline's public `sigmas` and `latents` (edit_start), and the output takes the source image's aspect (edit_size)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image


def _pipeline_module(pipe: Any) -> Any:
    return sys.modules[type(pipe).__module__]


def edit_size(pipe: Any, source: Image.Image) -> tuple[int, int]:
    """(width, height) of an edit's output: the source's aspect at the pipeline's own working area (~1 MP).

    The stock edit pipeline takes the aspect of the *last* image; with reference images that would be a
    reference's, so the source's is passed explicitly."""
    target_area = _pipeline_module(pipe).VAE_IMAGE_SIZE
    return _pipeline_module(pipe).calculate_dimensions(target_area, source.width / source.height)


def edit_start(
    pipe: Any, source: Image.Image, width: int, height: int, steps: int, denoise: float, num_images: int, generator
) -> dict[str, Any]:
    """Arguments that make a stock edit pipeline start from the source image noised to `denoise` instead of pure
    noise (img2img-style strength), through its public `sigmas` and `latents`:

    the last round(steps * denoise) sigmas of its default schedule, shifted by the scheduler as usual, and latents
    = sigma_0 * noise + (1 - sigma_0) * source latents (flow matching's forward process, scheduler.scale_noise).
    """
    count = max(1, round(steps * denoise))
    sigmas = np.linspace(1.0, 1 / steps, steps)[steps - count :]
    module = _pipeline_module(pipe)
    channels = pipe.transformer.config.in_channels // 4
    h, w = 2 * (height // (pipe.vae_scale_factor * 2)), 2 * (width // (pipe.vae_scale_factor * 2))
    dtype, device = pipe.text_encoder.dtype, pipe._execution_device
    image = pipe.image_processor.preprocess(pipe.image_processor.resize(source, height, width), height, width)
    clean = pipe._encode_vae_image(image.unsqueeze(2).to(device, dtype), generator)  # (1, C, 1, h, w), the mode
    clean = pipe._pack_latents(clean.expand(num_images, -1, -1, -1, -1), num_images, channels, h, w)
    noise = module.randn_tensor((num_images, 1, channels, h, w), generator=generator, device=device, dtype=dtype)
    noise = pipe._pack_latents(noise, num_images, channels, h, w)
    config = pipe.scheduler.config
    mu = module.calculate_shift(
        clean.shape[1],
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    scheduler = copy.deepcopy(pipe.scheduler)  # the pipeline sets its own from the same sigmas and mu
    scheduler.set_timesteps(sigmas=list(sigmas), mu=mu, device=device)
    latents = scheduler.scale_noise(clean, scheduler.timesteps[:1], noise)
    return {"sigmas": list(sigmas), "latents": latents, "num_inference_steps": count}


def edit_call(pipe: Any, kwargs: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """The edit task's arguments as QwenImageEditPlusPipeline takes them: `image` is [source, *references]."""
    source = kwargs["image"][0]
    width, height = edit_size(pipe, source)
    denoise = kwargs.pop("strength")
    kwargs |= {"width": width, "height": height}
    if denoise < 1.0:
        kwargs |= edit_start(
            pipe,
            source,
            width,
            height,
            kwargs["num_inference_steps"],
            denoise,
            kwargs["num_images_per_prompt"],
            generator,
        )
    return kwargs


# Pipeline class -> how its call's keyword arguments are adapted (model_repository/pipelines.py applies it).
CALL_HOOKS: dict[str, Callable[[Any, dict[str, Any], torch.Generator], dict[str, Any]]] = {
    "QwenImageEditPlusPipeline": edit_call,
}
