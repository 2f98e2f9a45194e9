"""The pipelines of a family, their heavy modules swapped for proxies, driven by one request at a time.

Triton-agnostic: pipeline_model.py feeds it decoded requests and a ComponentClient (BLS inside Triton). A request's
fields become the pipeline call's keyword arguments as their task declares (registry/tasks.py); the family folder
may adapt that call for a pipeline class (its pipeline.py's CALL_HOOKS) or bring a pipeline class diffusers does
not have (its PIPELINES: constructed like diffusers' own, modules as keyword arguments, so it gets the same
proxies and light components). By default the stock diffusers pipeline runs with the stock arguments.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from PIL import Image

from components.lora_set import LoraSet
from families import hooks
from registry import CHECKPOINTS, FAMILIES, TASKS, Field, Kind, Task, invalid_request_message

from .processors import load_processor
from .proxies import ComponentClient, ComponentProxy, proxies_for


def _light_components(path: Path, exclude: set[str], accepted: set[str]) -> dict[str, Any]:
    """The pipeline's modules that stay in this process (tokenizers, processor, scheduler) and its config values,
    loaded as from_pretrained would; only those the pipeline class takes (`accepted`).

    The pipeline is then constructed directly: from_pretrained insists that passed modules subclass the classes
    of model_index.json, which our proxies do not.
    """
    index = json.loads((path / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or name in exclude or name not in accepted:
            continue
        if not isinstance(entry, list):  # a pipeline config value (WanPipeline's boundary_ratio), as from_pretrained
            components[name] = entry
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


class _NoPromptEchoes(logging.Filter):
    """diffusers logs the part of a prompt it truncates (CLIP's 77 tokens): users' text stays out of server logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "was truncated because" not in record.getMessage()


_NO_PROMPT_ECHOES = _NoPromptEchoes()


class InvalidRequest(ValueError):
    """A request the model cannot serve for a reason only the model knows; api/ answers 422 naming `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(invalid_request_message(field, message))
        self.field = field


class NonFiniteOutput(RuntimeError):
    """The pipeline's pixels hold NaN or infinity: cast to uint8 they would answer a black or garbled image as if
    it were a result, so the request fails instead (api/ answers 500 `internal`)."""


@dataclass(frozen=True)
class PipelineRequest:
    """One request to a pipeline model, decoded: the checkpoint it is for and its task's inputs by tensor name
    (text as str, numbers as int/float, images as H x W x 3 and masks as H x W uint8 arrays; None where an optional
    input was left out)."""

    checkpoint: str
    tensors: Mapping[str, Any] = field(default_factory=dict)
    loras: LoraSet | None = None  # the LoRA set the request's `lora` components apply; None: the base model


def _pil(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels))


def _argument(f: Field, value: Any) -> Any:
    """A field's value as the pipeline takes it: media as PIL images, a video's key frames as a tuple of them."""
    if not f.media:
        return value
    if f.kind is Kind.VIDEO:  # K x H x W x 3 per video; none where the other field of a pair crossed
        videos = value if isinstance(value, tuple) else () if value is None else (value,)
        return tuple(_pil(frame) for video in videos for frame in video)
    return tuple(_pil(v) for v in value) if isinstance(value, tuple) else _pil(value)


def call_arguments(task: Task, values: list[tuple[Field, Any]]) -> dict[str, Any]:
    """keyword -> value of the fields that have one; the fields sharing a keyword become one list, in order
    (an edit's source image, then its references: `image=[source, *references]`)."""
    shared = Counter(f.keyword for f in TASKS[task].fields if f.keyword)
    kwargs: dict[str, Any] = {}
    for f, value in values:
        if f.keyword is None:
            continue
        value = _argument(f, value)
        if shared[f.keyword] > 1:
            kwargs.setdefault(f.keyword, []).extend(value if isinstance(value, tuple) else (value,))
        else:
            kwargs[f.keyword] = list(value) if isinstance(value, tuple) else value
    return kwargs


def _step_callback(progress: Callable[[int, int], None]) -> Callable[..., dict[str, Any]]:
    """diffusers' callback_on_step_end that reports (step done, steps in all) and changes nothing."""

    def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        progress(step + 1, int(pipe.num_timesteps))
        return {}

    return on_step_end


class Pipelines:
    """One pipeline per checkpoint of a family, for one task, all sharing the family's component models."""

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
        self.task = TASKS[self.spec.task]
        self.labels = dict(labels)
        own = hooks(family, "pipeline", "PIPELINES").get(self.spec.pipeline_class)
        self.call_hook = hooks(family, "pipeline", "CALL_HOOKS").get(self.spec.pipeline_class)
        pipeline_class = own or getattr(diffusers, self.spec.pipeline_class)
        for cls in pipeline_class.__mro__:  # a family's own class logs through the stock one's module too
            logging.getLogger(cls.__module__).addFilter(_NO_PROMPT_ECHOES)
        accepted = set(inspect.signature(pipeline_class.__init__).parameters)
        self.pipelines = {}
        self.lora_proxies: dict[str, list[ComponentProxy]] = {}  # checkpoint -> the proxies LoRA sets go to
        for key, path in checkpoint_dirs.items():
            components = self.family.components_for(key)
            proxies = proxies_for(family, components, Path(path), client, device, dtype)
            self.lora_proxies[key] = [proxies[role] for role, c in components.items() if c.lora and role in proxies]
            light = _light_components(Path(path), exclude=set(proxies), accepted=accepted)
            overrides = dict(CHECKPOINTS[key].scheduler_overrides)
            if overrides:  # e.g. a distilled LoRA's own sigma schedule
                light["scheduler"] = type(light["scheduler"]).from_config(light["scheduler"].config, **overrides)
            pipe = pipeline_class(**proxies, **light)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[key] = pipe
        call = inspect.signature(pipeline_class.__call__).parameters
        any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in call.values())
        self.accepts = None if any_keyword else set(call)

    def _check_tokens(self, pipe: Any, field: str, text: str, limit: int) -> None:
        tokenizer = getattr(pipe, self.family.prompt_tokenizer)
        count = len(tokenizer(text, truncation=False).input_ids)
        if count > limit:
            raise InvalidRequest(field, f"{field} is {count} tokens; the text encoder takes at most {limit}")

    def __call__(
        self, request: PipelineRequest, progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, str, float]:
        """Returns the images (N x H x W x 3, uint8), the label of the checkpoint that served them, seconds spent.
        `progress(step, steps)` is called after each denoising step (diffusers' callback_on_step_end)."""
        t0 = time.perf_counter()
        pipe = self.pipelines.get(request.checkpoint)
        if pipe is None:
            raise InvalidRequest("checkpoint", f"{request.checkpoint!r} is not served by {self.spec.triton_model}")
        checkpoint = CHECKPOINTS[request.checkpoint]
        values = list(self.task.call_values(request.tensors))
        for f, value in values:
            if f.token_limit and value:
                self._check_tokens(pipe, f.name, value, checkpoint.max_sequence_length)
        by_name = {f.name: value for f, value in values}
        for f, value in values:
            other = by_name.get(f.same_size_as) if f.same_size_as else None
            if value is not None and other is not None and value.shape[:2] != other.shape[:2]:
                raise InvalidRequest(f.name, f"{f.name} must be the size of {f.same_size_as}")
        generator = torch.Generator("cpu").manual_seed(by_name["seed"])
        kwargs = {
            **call_arguments(self.task.task, values),
            "max_sequence_length": checkpoint.max_sequence_length,
            "output_type": "np",
            **checkpoint.guidance_kwargs(by_name["cfg"], by_name.get("negative_prompt") or ""),
        }
        if self.call_hook is not None:
            kwargs = self.call_hook(pipe, kwargs, generator)
        refused = sorted(set(kwargs) - self.accepts) if self.accepts is not None else []
        if refused:  # a task keyword this pipeline lacks must be adapted by the family's CALL_HOOKS
            raise TypeError(f"{type(pipe).__name__} takes no {refused}: add a call hook in the family's pipeline.py")
        loras = request.loras if request.loras and request.loras.files else None
        targets = self.lora_proxies[request.checkpoint]
        if loras is not None and not targets:
            raise InvalidRequest("lora_name", f"{request.checkpoint} serves no LoRAs")
        for proxy in targets:  # each of the pipeline's calls to them carries the set
            proxy.loras = loras
        if progress is not None:
            kwargs["callback_on_step_end"] = _step_callback(progress)
        try:
            result = pipe(generator=generator, **kwargs)
        finally:
            for proxy in targets:
                proxy.loras = None
        # Image pipelines answer `images` (N x H x W x 3), video ones `frames` (N x F x H x W x 3).
        pixels = np.asarray(result.frames if hasattr(result, "frames") else result.images, dtype=np.float32)
        if not np.isfinite(pixels).all():
            raise NonFiniteOutput(f"{type(pipe).__name__} made non-finite pixels")
        # The same rounding as diffusers' numpy_to_pil, so served bytes equal the pipeline's PIL images.
        images = (pixels * 255).round().astype(np.uint8)
        label = self.labels[request.checkpoint] + (f"+{loras.label}" if loras else "")
        return images, label, time.perf_counter() - t0
