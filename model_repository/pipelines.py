"""The stock diffusers pipelines, their heavy modules swapped for proxies, driven by one request at a time.

Triton-agnostic: pipeline_model.py feeds it requests and a ComponentClient (BLS inside Triton).
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

from registry import CHECKPOINTS, FAMILIES, Checkpoint, Guidance, invalid_request_message

from .proxies import ComponentClient, ComponentProxy


def _light_components(path: Path, exclude: set[str]) -> dict[str, Any]:
    """The pipeline's modules that stay in this process (tokenizers, scheduler), loaded as from_pretrained would.

    The pipeline is then constructed directly: from_pretrained insists that passed modules subclass the classes
    of model_index.json, which our proxies do not.
    """
    index = json.loads((path / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or name in exclude or not isinstance(entry, list):
            continue
        library, class_name = entry
        if class_name is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        components[name] = cls.from_pretrained(path, subfolder=name)
    return components


class InvalidRequest(ValueError):
    """A request the model cannot serve for a reason only the model knows; api/ answers 422 naming `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(invalid_request_message(field, message))
        self.field = field


@dataclass(frozen=True)
class TextToImageRequest:
    checkpoint: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    cfg: float
    seed: int
    num_images: int


def guidance_kwargs(checkpoint: Checkpoint, cfg: float, negative_prompt: str) -> dict[str, Any]:
    """Map the route's `cfg` knob onto the pipeline's arguments (api.md, "Routes")."""
    if checkpoint.guidance is Guidance.DISTILLED:
        # Guidance-distilled: cfg feeds the guidance embedding; one transformer pass per step, no negative prompt.
        return {"guidance_scale": cfg, "true_cfg_scale": 1.0}
    if checkpoint.guidance is Guidance.NONE_OR_TRUE_CFG and cfg <= 1.0:
        return {"true_cfg_scale": 1.0}
    # True CFG against negative_prompt (empty when none was sent), two passes per step.
    return {"true_cfg_scale": cfg, "negative_prompt": negative_prompt}


class TextToImagePipelines:
    """One stock pipeline per checkpoint of a family, all sharing the family's component models."""

    def __init__(
        self,
        family: str,
        checkpoint_dirs: Mapping[str, Path],
        labels: Mapping[str, str],
        client: ComponentClient,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.family = FAMILIES[family]
        self.labels = dict(labels)
        pipeline_class = getattr(diffusers, self.family.pipeline_class)
        self.pipelines = {}
        for key, path in checkpoint_dirs.items():
            proxies = {
                role: ComponentProxy(component, Path(path), client, device, dtype)
                for role, component in self.family.components_for(key).items()
            }
            pipe = pipeline_class(**proxies, **_light_components(Path(path), exclude=set(proxies)))
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[key] = pipe

    def _check_tokens(self, pipe: Any, field: str, text: str, limit: int) -> None:
        tokenizer = getattr(pipe, self.family.prompt_tokenizer)
        count = len(tokenizer(text, truncation=False).input_ids)
        if count > limit:
            raise InvalidRequest(field, f"{field} is {count} tokens; the text encoder takes at most {limit}")

    def __call__(self, request: TextToImageRequest) -> tuple[np.ndarray, str, float]:
        """Returns the images (N x H x W x 3, uint8), the label of the checkpoint that served them, seconds spent."""
        t0 = time.perf_counter()
        pipe = self.pipelines.get(request.checkpoint)
        if pipe is None:
            raise InvalidRequest("checkpoint", f"{request.checkpoint!r} is not served by {self.family.triton_pipeline}")
        checkpoint = CHECKPOINTS[request.checkpoint]
        self._check_tokens(pipe, "prompt", request.prompt, checkpoint.max_sequence_length)
        if request.negative_prompt:
            self._check_tokens(pipe, "negative_prompt", request.negative_prompt, checkpoint.max_sequence_length)
        result = pipe(
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            num_images_per_prompt=request.num_images,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            max_sequence_length=checkpoint.max_sequence_length,
            output_type="np",
            **guidance_kwargs(checkpoint, request.cfg, request.negative_prompt),
        )
        # The same rounding as diffusers' numpy_to_pil, so served bytes equal the pipeline's PIL images.
        images = (np.asarray(result.images, dtype=np.float32) * 255).round().astype(np.uint8)
        return images, self.labels[request.checkpoint], time.perf_counter() - t0
