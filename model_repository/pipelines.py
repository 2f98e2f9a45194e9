"""The stock diffusers pipelines, their heavy modules swapped for proxies, driven by one request at a time.

Triton-agnostic: pipeline_model.py feeds it requests and a ComponentClient (BLS inside Triton). Every task calls
its stock pipeline with the pipeline's own arguments; an edit's `denoise` below 1 goes in through the pipeline's
public `sigmas` and `latents` (see edit_start).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image

from registry import CHECKPOINTS, FAMILIES, Task, invalid_request_message

from .processors import load_processor
from .proxies import ComponentClient, proxies_for


def _light_components(path: Path, exclude: set[str], accepted: set[str]) -> dict[str, Any]:
    """The pipeline's modules that stay in this process (tokenizers, processor, scheduler), loaded as
    from_pretrained would; only those the pipeline class takes (`accepted`).

    The pipeline is then constructed directly: from_pretrained insists that passed modules subclass the classes
    of model_index.json, which our proxies do not.
    """
    index = json.loads((path / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or name in exclude or name not in accepted or not isinstance(entry, list):
            continue
        library, class_name = entry
        if class_name is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        if name == "processor":
            components[name] = load_processor(cls, path, name)
        else:
            components[name] = cls.from_pretrained(path, subfolder=name)
    return components


class InvalidRequest(ValueError):
    """A request the model cannot serve for a reason only the model knows; api/ answers 422 naming `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(invalid_request_message(field, message))
        self.field = field


@dataclass(frozen=True)
class GenerationRequest:
    """One request to a pipeline model (registry.PIPELINE_INPUTS of its task), decoded."""

    checkpoint: str
    prompt: str
    negative_prompt: str
    steps: int
    cfg: float
    seed: int
    num_images: int
    width: int | None = None  # text to image only; edits follow the source image
    height: int | None = None
    source_image: np.ndarray | None = None  # H x W x 3 uint8
    reference_images: tuple[np.ndarray, ...] = ()
    mask_image: np.ndarray | None = None  # H x W uint8, 255 = repaint
    denoise: float = 1.0


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


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels))


class Pipelines:
    """One stock pipeline per checkpoint of a family, for one task, all sharing the family's component models."""

    def __init__(
        self,
        family: str,
        checkpoint_dirs: Mapping[str, Path],
        labels: Mapping[str, str],
        client: ComponentClient,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        task: Task | None = None,
    ) -> None:
        self.family = FAMILIES[family]
        self.spec = self.family.pipeline_for(task) if task else self.family.pipelines[0]
        self.labels = dict(labels)
        pipeline_class = getattr(diffusers, self.spec.pipeline_class)
        accepted = set(inspect.signature(pipeline_class.__init__).parameters)
        self.pipelines = {}
        for key, path in checkpoint_dirs.items():
            proxies = proxies_for(self.family.components_for(key), Path(path), client, device, dtype)
            light = _light_components(Path(path), exclude=set(proxies), accepted=accepted)
            overrides = dict(CHECKPOINTS[key].scheduler_overrides)
            if overrides:  # e.g. a distilled LoRA's own sigma schedule
                light["scheduler"] = type(light["scheduler"]).from_config(light["scheduler"].config, **overrides)
            pipe = pipeline_class(**proxies, **light)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[key] = pipe

    def _check_tokens(self, pipe: Any, field: str, text: str, limit: int) -> None:
        tokenizer = getattr(pipe, self.family.prompt_tokenizer)
        count = len(tokenizer(text, truncation=False).input_ids)
        if count > limit:
            raise InvalidRequest(field, f"{field} is {count} tokens; the text encoder takes at most {limit}")

    def _task_kwargs(self, pipe: Any, request: GenerationRequest, generator: torch.Generator) -> dict[str, Any]:
        task = self.spec.task
        if task is Task.TEXT_TO_IMAGE:
            return {"width": request.width, "height": request.height}
        if request.source_image is None:
            raise InvalidRequest("source_image", "source_image is required")
        source = _pil(request.source_image)
        if task is Task.INPAINT:
            if request.mask_image is None:
                raise InvalidRequest("mask_image", "mask_image is required")
            if request.mask_image.shape[:2] != request.source_image.shape[:2]:
                raise InvalidRequest("mask_image", "mask_image must be the size of source_image")
            return {"image": source, "mask_image": _pil(request.mask_image), "strength": request.denoise}
        width, height = edit_size(pipe, source)
        kwargs: dict[str, Any] = {
            "image": [source, *(_pil(r) for r in request.reference_images)],
            "width": width,
            "height": height,
        }
        if request.denoise < 1.0:
            kwargs |= edit_start(
                pipe, source, width, height, request.steps, request.denoise, request.num_images, generator
            )
        return kwargs

    def __call__(self, request: GenerationRequest) -> tuple[np.ndarray, str, float]:
        """Returns the images (N x H x W x 3, uint8), the label of the checkpoint that served them, seconds spent."""
        t0 = time.perf_counter()
        pipe = self.pipelines.get(request.checkpoint)
        if pipe is None:
            raise InvalidRequest("checkpoint", f"{request.checkpoint!r} is not served by {self.spec.triton_model}")
        checkpoint = CHECKPOINTS[request.checkpoint]
        self._check_tokens(pipe, "prompt", request.prompt, checkpoint.max_sequence_length)
        if request.negative_prompt:
            self._check_tokens(pipe, "negative_prompt", request.negative_prompt, checkpoint.max_sequence_length)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        kwargs = {
            "prompt": request.prompt,
            "num_inference_steps": request.steps,
            "num_images_per_prompt": request.num_images,
            "max_sequence_length": checkpoint.max_sequence_length,
            "output_type": "np",
            **checkpoint.guidance_kwargs(request.cfg, request.negative_prompt),
        }
        kwargs |= self._task_kwargs(pipe, request, generator)
        result = pipe(generator=generator, **kwargs)
        # The same rounding as diffusers' numpy_to_pil, so served bytes equal the pipeline's PIL images.
        images = (np.asarray(result.images, dtype=np.float32) * 255).round().astype(np.uint8)
        return images, self.labels[request.checkpoint], time.perf_counter() - t0
