"""The shapes of registry entries: checkpoints, components, families, routes and app groups.

Pure data, no imports of torch, diffusers or any other stage of ours: each family folder (families/) declares its
entries in these shapes, and api/, export/, model_repository/ and perf/ all read them, so each fact about a route or
a model lives in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum


class Task(StrEnum):
    """What a route does; each task's request fields and outputs are declared once, in registry/tasks.py."""

    TEXT_TO_IMAGE = "text_to_image"
    EDIT = "edit"  # source_image (+ reference_images) edited by an instruction
    INPAINT = "inpaint"  # source_image repainted where mask_image is white
    TEXT_TO_VIDEO = "text_to_video"
    REFERENCE_TO_VIDEO = "reference_to_video"  # a new clip of the character in reference_video(s)


class Guidance(StrEnum):
    """How a checkpoint uses the route's `cfg` knob (api.md, "Routes")."""

    # Distilled without guidance: no guidance at cfg <= 1, true CFG against negative_prompt above.
    NONE_OR_TRUE_CFG = "none_or_true_cfg"
    # Guidance-distilled: cfg is fed to the transformer's guidance embedding; one pass per step.
    DISTILLED = "distilled"
    # True classifier-free guidance: two passes per step.
    TRUE_CFG = "true_cfg"


@dataclass(frozen=True)
class Dim:
    """A symbolic tensor dimension with the range its engines must cover (min <= opt <= max)."""

    name: str
    min: int
    opt: int
    max: int
    # A multiple of another dim (base name, factor): the traced graph ties them (a VAE cache at twice the latent's
    # height), so the exporter is told so; min/opt/max are the base's times the factor.
    of: tuple[str, int] | None = None

    @classmethod
    def times(cls, name: str, base: Dim, factor: int) -> Dim:
        return cls(name, base.min * factor, base.opt * factor, base.max * factor, of=(base.name, factor))


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output; `dims` hold ints (fixed) or Dim names (dynamic)."""

    name: str
    dtype: str  # Triton dtype name without the TYPE_ prefix: FP32, INT64, INT32, UINT8, BYTES
    dims: tuple[int | str, ...]
    optional: bool = False  # a request may leave it out (Triton config `optional: true`)
    # FP32 on every profile; other float tensors travel in the precision the module runs in (BF16 on the GPU).
    exact: bool = False


@dataclass(frozen=True)
class Lora:
    """A LoRA file: merged into a component at build time (Component.merged_lora) or applied per request."""

    key: str
    family: str  # the model family whose modules it adapts
    hub_id: str
    weight_name: str  # the .safetensors file in the hub repo
    revision: str  # a 40-hex commit SHA once pinned ("main" = not yet pinned)
    tiny: str  # the family's tiny builder writing a random LoRA of the same key layout
    scale: float = 1.0


@dataclass(frozen=True)
class Checkpoint:
    """A diffusers checkpoint: where production loads it and which tiny builder stands in for it here."""

    key: str
    hub_id: str
    # A 40-hex commit SHA once pinned; "main" marks an entry not yet pinned, which the hub loader refuses.
    revision: str
    family: str
    tiny: str  # name of the family's tiny random-weight builder (its folder's tiny.py)
    guidance: Guidance
    max_sequence_length: int  # the text encoder's token limit for a prompt
    # Scheduler config values that differ from the checkpoint's scheduler_config.json (e.g. a distilled LoRA's
    # sigma schedule), as (key, value) pairs.
    scheduler_overrides: tuple[tuple[str, object], ...] = ()

    def guidance_kwargs(self, cfg: float, negative_prompt: str) -> dict[str, object]:
        """The route's `cfg` knob as this checkpoint's diffusers pipeline takes it (api.md, "Routes")."""
        if self.guidance is Guidance.DISTILLED:
            # Guidance-distilled: cfg feeds the guidance embedding; one transformer pass per step, no negative prompt.
            return {"guidance_scale": cfg, "true_cfg_scale": 1.0}
        if cfg <= 1.0:
            # No CFG runs at cfg <= 1; passing the negative prompt anyway only makes diffusers warn on every request.
            return {"true_cfg_scale": 1.0}
        # True CFG against negative_prompt (empty when none was sent), two passes per step.
        return {"true_cfg_scale": cfg, "negative_prompt": negative_prompt}


@dataclass(frozen=True)
class Component:
    """One heavy module of a pipeline, served as its own Triton model.

    `checkpoints` lists every checkpoint whose subfolder holds this exact module; the first one is exported and the
    others must carry identical weights (export/ checks the content hash), so two checkpoints of a family can share
    one text encoder.
    """

    triton_model: str
    role: str  # the pipeline attribute the proxy replaces: text_encoder, text_encoder_2, transformer, vae
    subfolder: str  # diffusers subfolder in the checkpoint
    exporter: str  # the adapter (components/ or the family folder's adapters.py) that wraps it for ONNX and torch
    checkpoints: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Runtime per serving profile: "onnxruntime" (CPU), "torch" (the diffusers module on CUDA inside the python
    # backend, tensors passed by DLPack), "tensorrt" (a plan).
    backends: tuple[tuple[str, str], ...] = (("cpu", "onnxruntime"), ("gpu", "torch"))
    precision: str = "bf16"  # GPU weights; "fp8" runs the transformer blocks' large matmuls in FP8
    # torch runtime speed-ups (model_repository/accelerate.py): "fuse_qkv", "compile", and FP8 follows precision.
    accelerations: tuple[str, ...] = ()
    # A registry Lora merged into the weights at build time: its own component, no LoRA cost per step.
    merged_lora: str | None = None
    # Per-request LoRAs apply here (the routes with `lora` send them): the component takes the optional LORAS input
    # and merges each LoRA set from its base weights (components/lora_weights.py).
    lora: bool = False
    # Engine-profile ranges that replace the family's for this component (TensorRT): e.g. a VAE whose plan cannot be
    # built over the family's whole image range.
    profile_dims: tuple[Dim, ...] = ()
    # The linears that run in FP8 when precision is "fp8": a regular expression, full match, over the names of the
    # diffusers module's named_modules() ("blocks.0.attn.to_q"; no adapter prefix). One choice for every
    # runtime: the torch GPU path (components/fp8.py) and the TensorRT Q/DQ graph (export/fp8_qdq.py) both read
    # it, then keep only Linears in use whose in/out features are multiples of 16 (FP8 GEMM sizes).
    fp8_layers: str | None = None

    def __post_init__(self) -> None:
        if self.precision == "fp8" and not self.fp8_layers:
            raise ValueError(f"{self.triton_model}: precision 'fp8' needs fp8_layers (which linears run in FP8)")
        if self.fp8_layers is not None:
            re.compile(self.fp8_layers)  # a typo fails at import, not in a GPU build

    def backend(self, profile: str) -> str:
        return dict(self.backends)[profile]


@dataclass(frozen=True)
class PipelineModel:
    """A Triton pipeline model: one pipeline class (diffusers', or the family's own) serving one task over the
    family's components."""

    task: Task  # fixes the model's request tensors (registry/tasks.py)
    pipeline_class: str  # the diffusers pipeline class it wraps, or one the family folder builds (its pipeline.py)
    triton_model: str


@dataclass(frozen=True)
class Family:
    """A model family: components served as Triton models and the pipeline models that call them."""

    name: str
    # the tokenizer whose token count Checkpoint.max_sequence_length bounds
    prompt_tokenizer: str
    pipelines: tuple[PipelineModel, ...]  # the first one's pipeline class also converts LoRA keys and calibrates
    components: tuple[Component, ...]
    dims: tuple[Dim, ...]  # the ranges of every symbolic dim its components use
    vae_scale: int = 8  # pixels per latent cell (the pipelines' vae_scale_factor)
    patch: int = 2  # latent cells per transformer token side (2x2 patches packed into one token)
    # api.md `lora_id`: the store is searched for "<prefix>-character-{id}.safetensors" first, where a family has one.
    lora_store_prefix: str | None = None

    @property
    def pipeline_class(self) -> str:
        return self.pipelines[0].pipeline_class

    def pipeline_for(self, task: Task) -> PipelineModel:
        by_task = {p.task: p for p in self.pipelines}
        if task not in by_task:
            raise KeyError(f"family {self.name} has no pipeline for {task}")
        return by_task[task]

    def dim(self, name: str) -> Dim:
        return next(d for d in self.dims if d.name == name)

    def components_for(self, checkpoint: str) -> dict[str, Component]:
        """role -> component serving that role for this checkpoint."""
        return {c.role: c for c in self.components if checkpoint in c.checkpoints}


@dataclass(frozen=True)
class Limits:
    min_size: int = 256
    max_size: int = 2048
    size_multiple: int = 16
    # The fewest steps the route's scheduler can run: a schedule stretched to a terminal sigma (Qwen-Image's
    # shift_terminal) divides by zero at one step, so such routes start at two (tests/contract checks it).
    min_steps: int = 1
    max_steps: int = 100
    max_prompt_chars: int = 4000
    max_num_images: int = 4
    min_cfg: float = 0.0
    max_cfg: float = 20.0
    # Media inputs (api.md: checked for format, bytes and pixels before they are decoded in full). The pixel limit
    # protects memory; the pipelines resize what they take to their own working size.
    max_media_bytes: int = 25 * 1024 * 1024
    max_media_pixels: int = 4096 * 4096
    max_reference_images: int = 2
    # `loras` items a request may stack on top of its lora_id / lora_name (api.md)
    max_loras: int = 4
    # Video routes (api.md): num_frames is 4k+1 in this range (the VAE's 4x temporal compression plus the first
    # frame), fps up to max_fps.
    min_frames: int = 5
    max_frames: int = 121
    max_fps: int = 30
    # Video inputs (reference_videos items), each checked before it is decoded in full (api/video_decoding.py).
    max_reference_videos: int = 3
    max_video_bytes: int = 50 * 1024 * 1024
    max_video_frames: int = 300
    max_video_pixels: int = 1920 * 1080
    max_video_seconds: float = 30.0


@dataclass(frozen=True)
class Route:
    path: str
    group: str
    checkpoint: str
    task: Task
    steps: int
    cfg: float
    width: int
    height: int
    summary: str
    limits: Limits = field(default_factory=Limits)
    timeout_s: float = 120.0
    # Named sizes (api.md `aspect_ratio`): (name, width, height); empty where the route has none.
    aspect_ratios: tuple[tuple[str, int, int], ...] = ()
    denoise: float | None = None  # default of `denoise` on edit and inpaint routes
    num_frames: int | None = None  # defaults of a video route's num_frames and fps
    fps: int | None = None
    # A character-LoRA route (api.md `-lora` routes): the LoRA fields, applied per request to the checkpoint's
    # `lora` components.
    lora: bool = False


@dataclass(frozen=True)
class UnsupportedRoute:
    """A path the product's client calls that this stack refuses: 501 `unsupported` for any body, before any
    validation, with `message` saying why and where to go instead (api.md, "Errors")."""

    path: str
    group: str
    summary: str
    message: str


@dataclass(frozen=True)
class AppGroup:
    """A Modal container's worth of routes: one Triton + one api/ per group."""

    name: str
    gpu: str = "H100"
    max_concurrency: int = 1  # generations sent to Triton at once
    max_queue: int = 8  # waiting requests beyond which the group answers 429
    scaledown_window_s: int = 300
    startup_timeout_s: int = 1200


@dataclass(frozen=True)
class Declaration:
    """What one family folder adds to the registry (families/<folder>/__init__.py's DECLARATION)."""

    families: tuple[Family, ...]
    checkpoints: tuple[Checkpoint, ...]
    routes: tuple[Route, ...]
    groups: tuple[AppGroup, ...] = ()
    loras: tuple[Lora, ...] = ()
    unsupported: tuple[UnsupportedRoute, ...] = ()
