"""Each task declared once: the request fields a route of that task takes (api.md, "Request fields") with their
rules and defaults, the tensor each becomes on its way into the Triton pipeline model, the pipeline keyword it
becomes there, the output the task answers, and a sample request.

Everything that speaks a task derives from these declarations: the API's request models and media decoding
(api/), the pipeline model's request parsing and call (model_repository/), the warm-up and smoke bodies
(triton_modal.py), perf_analyzer's inputs (perf/) and the tests' valid bodies. Pure data and plain functions: no
pydantic, numpy or PIL here.

A field's route-dependent values (its default, its limits) are `FromRoute` references, read off the route when a
request model is built: `FromRoute("steps")` is `route.steps`, `FromRoute("limits.max_steps")` its ceiling.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .spec import Route, Task, TensorSpec

MAX_SEED = 2**32 - 1
MAX_LORA_SCALE = 2.0  # api.md: lora_strength and each `loras` scale within +-2
IMAGE_FORMATS = ("png", "jpeg", "webp")  # output_format of image answers (api/encoding.py encodes each)
VIDEO_FORMATS = ("webp", "mp4")  # of video answers: animated WebP (what the product reads) or H.264 MP4


class Kind(StrEnum):
    TEXT = "text"  # a JSON string; crosses as UTF-8 bytes in a UINT8 tensor
    INTEGER = "integer"
    NUMBER = "number"
    CHOICE = "choice"  # one of a set of strings
    IMAGE = "image"  # base64 PNG, JPEG or WEBP; crosses decoded, H x W x RGB uint8
    MASK = "mask"  # an image read as one channel; crosses H x W uint8, 255 = white
    # base64 MP4, WebM, MOV, MKV, animated WebP or GIF; crosses as its key frames (sampled by the API), K x H x W x RGB
    VIDEO = "video"
    LORAS = "loras"  # a list of {"name" or "url", "scale"} objects (api.md `loras`)


MEDIA = (Kind.IMAGE, Kind.MASK, Kind.VIDEO)


@dataclass(frozen=True)
class FromRoute:
    """A value read off the route: an attribute path such as "steps" or "limits.max_steps"."""

    path: str

    def of(self, route: Route) -> Any:
        value: Any = route
        for part in self.path.split("."):
            value = getattr(value, part)
        return value


def resolve(value: Any, route: Route) -> Any:
    return value.of(route) if isinstance(value, FromRoute) else value


@dataclass(frozen=True)
class Field:
    """One request field. Rules are JSON-schema-like and strict: no coercion ("5" is not 5, 5.0 is not an integer).

    `tensor`: the pipeline model input it crosses as (None: the API uses it itself, e.g. output_format); a field of
    several `items` crosses as `<name>_1` .. `<name>_<items>`, each optional. `keyword`: the argument of the diffusers
    pipeline call the value becomes (fields with the same keyword become one list, in declaration order); None for
    the values the pipeline model turns into others itself (seed -> generator, cfg and negative_prompt -> the
    checkpoint's guidance arguments)."""

    name: str
    kind: Kind
    description: str
    required: bool = False
    default: Any = None  # a literal or FromRoute; None with required=False: the field may be left out
    minimum: Any = None  # >=
    exclusive_minimum: Any = None  # >
    maximum: Any = None  # <=
    multiple_of: Any = None
    remainder: int = 0  # with multiple_of: value % multiple_of == remainder (num_frames is 4k+1)
    max_length: Any = None  # characters of a text; values of a list
    choices: Any = ()  # CHOICE: the allowed values, or FromRoute to rows whose first element is the value
    # CHOICE: the fields a row's other elements set (aspect_ratio "16:9" -> width 1664, height 928); sending one of
    # them too is a conflict
    sets: tuple[str, ...] = ()
    items: int | None = None  # a list field: the tensor slots it crosses as (max_length bounds the list per route)
    min_items: int = 0  # a list field: the fewest values it takes when sent (an empty list is then a 422)
    not_blank: bool = False  # text that is only whitespace is invalid
    blank_is_none: bool = False  # text that is only whitespace counts as not sent
    token_limit: bool = False  # text whose token count the pipeline model checks against the checkpoint's limit
    same_size_as: str | None = None  # MASK: must have that media field's width and height
    only_if: str | None = None  # present only on routes whose attribute of this name is set (aspect_ratios)
    # Another name of that field (num_frames' `length`): either may be sent, not both; its value becomes that field's.
    alias_of: str | None = None
    # This field or that one, exactly one of them (reference_video or reference_videos).
    either_of: str | None = None
    tensor: TensorSpec | None = None
    keyword: str | None = None

    @property
    def media(self) -> bool:
        return self.kind in MEDIA

    def tensors(self) -> tuple[TensorSpec, ...]:
        """The pipeline model inputs this field crosses as."""
        if self.tensor is None:
            return ()
        if self.items is None:
            return (self.tensor,)
        t = self.tensor
        return tuple(TensorSpec(f"{t.name}_{i}", t.dtype, t.dims, optional=True) for i in range(1, self.items + 1))

    def choices_of(self, route: Route) -> tuple[str, ...]:
        rows = resolve(self.choices, route)
        return tuple(row[0] if isinstance(row, tuple) else row for row in rows)

    def presets_of(self, route: Route) -> dict[str, dict[str, Any]]:
        """CHOICE fields that set others: value -> {field: value}."""
        if not self.sets:
            return {}
        return {row[0]: dict(zip(self.sets, row[1:], strict=True)) for row in resolve(self.choices, route)}


@dataclass(frozen=True)
class Output:
    """What a task's pipeline model answers: its response tensors, and the request fields that say how the API
    encodes them."""

    kind: str  # "images": N x H x W x RGB uint8; "video": N x F x H x W x RGB uint8; encoded as the fields ask
    tensors: tuple[TensorSpec, ...]
    fields: tuple[Field, ...]

    @property
    def pixels(self) -> TensorSpec:
        """IMAGES (N x H x W x 3), or a video's FRAMES (N x F x H x W x 3): the tensor that ends a response stream."""
        return self.tensors[0]

    @property
    def stream_tensors(self) -> tuple[TensorSpec, ...]:
        """Every tensor a response of the pipeline model's stream may carry."""
        return (*self.tensors, PROGRESS)


@dataclass(frozen=True)
class SampleMedia:
    """A sample request's media input: a flat image (a mask: a white centre square) of this size, rendered by whoever
    needs it (base64 PNG for a body, an array for perf_analyzer). In a declaration the size is left 0: the route's
    default size, or the size the sample is asked for."""

    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class TaskSpec:
    task: Task
    own: tuple[Field, ...]  # the task's own fields; every task also takes COMMON and its output's fields
    output: Output
    # A small valid request: values of the required fields (media as SampleMedia); everything else takes defaults.
    sample: Mapping[str, Any] = field(default_factory=dict)
    # The fields that set the output's size, where the request sets it (width, height); () where the output follows
    # an input (an edit's source image).
    size_fields: tuple[str, ...] = ()

    @property
    def fields(self) -> tuple[Field, ...]:
        """Every field: the task's own, the common ones, the LoRA routes', the output's."""
        return (*self.own, *COMMON, *LORA_FIELDS, *self.output.fields)

    def fields_of(self, route: Route) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.only_if is None or getattr(route, f.only_if))

    @property
    def prompt(self) -> Field:
        """The field the pipeline takes as its prompt (`prompt`, an edit's `instruction`): where trigger_word goes."""
        return next(f for f in self.own if f.keyword == "prompt")

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def media(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.media)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The pipeline model's request tensors: the checkpoint key, the LoRA set, then each field's."""
        return (CHECKPOINT, LORAS, *(t for f in self.fields for t in f.tensors()))

    def resolved(self, route: Route, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` with what a preset sets (aspect_ratio -> width, height) and what another name gives its field
        (length -> num_frames)."""
        values = dict(values)
        for f in self.fields_of(route):
            if f.sets and values.get(f.name) is not None:
                values.update(f.presets_of(route)[values[f.name]])
            if f.alias_of and values.get(f.name) is not None:
                values[f.alias_of] = values[f.name]
        return values

    def tensor_values(self, route: Route, values: Mapping[str, Any], loras: str | None = None) -> dict[str, Any]:
        """The pipeline model inputs of one request, by tensor name, from its field values (defaults applied,
        media decoded: arrays in the layout of their tensors) and its resolved LoRA set (LoraSet.encode; None: the
        base model). A list field's missing items are None (optional inputs left out); a preset (aspect_ratio)
        sets the fields it names."""
        values = self.resolved(route, values)
        out: dict[str, Any] = {CHECKPOINT.name: route.checkpoint, LORAS.name: loras}
        for f in self.fields_of(route):
            tensors = f.tensors()
            if not tensors:
                continue
            if f.items is None:
                value = values.get(f.name)
                out[tensors[0].name] = "" if value is None and f.kind is Kind.TEXT else value
            else:
                given = list(values.get(f.name) or ())
                for i, spec in enumerate(tensors):
                    out[spec.name] = given[i] if i < len(given) else None
        return out

    def sample_values(
        self, route: Route, *, steps: int | None = None, size: int | None = None, seed: int | None = 0
    ) -> dict[str, Any]:
        """The sample request of `route` as field values: the declared sample, media of the route's default size (or
        size x size, which also sets the size fields), `steps` steps (within the route's range) and `seed`."""
        width, height = (size, size) if size else (route.width, route.height)
        values = {
            name: SampleMedia(width, height) if isinstance(value, SampleMedia) else value
            for name, value in self.sample.items()
        }
        if size:
            values |= dict.fromkeys(self.size_fields, size)
        if steps is not None:
            values["steps"] = max(route.limits.min_steps, min(steps, route.limits.max_steps))
        if seed is not None:
            values["seed"] = seed
        if route.lora:  # the random LoRA every build writes into the store for each LoRA route's checkpoint
            values["lora_name"] = sample_lora_name(route.checkpoint)
        return values

    def field_of(self, tensor: str) -> Field:
        """The field a pipeline input carries."""
        return next(f for f in self.fields if any(t.name == tensor for t in f.tensors()))

    def call_values(self, tensors: Mapping[str, Any]) -> Iterator[tuple[Field, Any]]:
        """(field, value) of every field that crossed, from the decoded tensors (lists gathered, absent items
        dropped): what the pipeline model's call is made of."""
        for f in self.fields:
            specs = f.tensors()
            if not specs:
                continue
            if f.items is None:
                yield f, tensors.get(specs[0].name)
            else:
                yield f, tuple(v for s in specs if (v := tensors.get(s.name)) is not None)


CHECKPOINT = TensorSpec("CHECKPOINT", "UINT8", (-1,))  # the registry checkpoint key the request is for
# The request's LoRA set, resolved by the API from its LoRA fields to local files (components/lora_weights.py,
# LoraSet.encode): JSON as UTF-8 bytes; left out for the base model. The pipeline model hands it to its `lora`
# components with every call, which take it as this same optional input.
LORAS = TensorSpec("LORAS", "UINT8", (-1,), optional=True)


def sample_lora_name(checkpoint: str) -> str:
    """The store name of the random LoRA a build writes for `checkpoint` (sample requests and smoke tests of LoRA
    routes use it)."""
    return f"sample-{checkpoint}"


_TEXT = ("UINT8", (-1,))


def _text(name: str, tensor: str, description: str, **kw: Any) -> Field:
    return Field(
        name,
        Kind.TEXT,
        description,
        max_length=FromRoute("limits.max_prompt_chars"),
        token_limit=True,
        tensor=TensorSpec(tensor, *_TEXT),
        **kw,
    )


def _prompt(name: str, description: str) -> Field:
    return _text(name, "PROMPT", description, required=True, not_blank=True, keyword="prompt")


def _size(name: str) -> Field:
    return Field(
        name,
        Kind.INTEGER,
        "Pixels: a multiple of the route's size step, within its size range",
        default=FromRoute(name),
        minimum=FromRoute("limits.min_size"),
        maximum=FromRoute("limits.max_size"),
        multiple_of=FromRoute("limits.size_multiple"),
        tensor=TensorSpec(name.upper(), "INT32", (1,)),
        keyword=name,
    )


def _image(name: str, tensor: str, description: str, **kw: Any) -> Field:
    return Field(name, Kind.IMAGE, description, tensor=TensorSpec(tensor, "UINT8", (-1, -1, 3)), **kw)


def _denoise(description: str) -> Field:
    return Field(
        "denoise",
        Kind.NUMBER,
        description,
        default=FromRoute("denoise"),
        exclusive_minimum=0.0,
        maximum=1.0,
        tensor=TensorSpec("DENOISE", "FP32", (1,)),
        keyword="strength",
    )


# Every generating task takes these (api.md: the product's client sends cfg and negative_prompt to every route).
COMMON: tuple[Field, ...] = (
    _text("negative_prompt", "NEGATIVE_PROMPT", "What to avoid; used whenever CFG runs", blank_is_none=True),
    Field(
        "steps",
        Kind.INTEGER,
        "Denoising steps",
        default=FromRoute("steps"),
        minimum=FromRoute("limits.min_steps"),
        maximum=FromRoute("limits.max_steps"),
        tensor=TensorSpec("STEPS", "INT32", (1,)),
        keyword="num_inference_steps",
    ),
    Field(
        "cfg",
        Kind.NUMBER,
        "The route's guidance knob (api.md, Routes)",
        default=FromRoute("cfg"),
        minimum=FromRoute("limits.min_cfg"),
        maximum=FromRoute("limits.max_cfg"),
        tensor=TensorSpec("CFG", "FP32", (1,)),
    ),
    Field(
        "seed",
        Kind.INTEGER,
        "Drawn at random when absent; returned in x-seed",
        minimum=0,
        maximum=MAX_SEED,
        tensor=TensorSpec("SEED", "INT64", (1,)),
    ),
)


# The LoRA routes' fields (api.md): resolved by the API to local files before the request queues, then sent as the
# LORAS tensor (no tensor of their own); trigger_word is prepended to the prompt field.
LORA_FIELDS: tuple[Field, ...] = (
    Field(
        "lora_id",
        Kind.TEXT,
        "A character LoRA of the store: <family>-character-{id}, then character-{id}",
        max_length=64,
        only_if="lora",
    ),
    Field(
        "lora_name",
        Kind.TEXT,
        "A file name in the LoRA store (.safetensors added if missing); instead of lora_id",
        max_length=128,
        only_if="lora",
    ),
    Field(
        "lora_strength",
        Kind.NUMBER,
        "The scale of lora_id / lora_name's LoRA",
        default=1.0,
        minimum=-MAX_LORA_SCALE,
        maximum=MAX_LORA_SCALE,
        only_if="lora",
    ),
    Field("trigger_word", Kind.TEXT, "Prepended to the prompt", max_length=200, blank_is_none=True, only_if="lora"),
    Field(
        "loras",
        Kind.LORAS,
        'More LoRAs stacked on top: {"name": store name} or {"url": https URL of an allowed host}, each with a "scale"',
        max_length=FromRoute("limits.max_loras"),
        only_if="lora",
    ),
)

# The checkpoint that served an answer (hub id@revision or local path) as UTF-8 bytes. Numeric, not BYTES, so every
# output can leave the stub by DLPack: with numpy 2 in the stub's environment (the GPU machine) any numpy output fails
# ("output tensor shape does not match size of output"), DLPack ones pass.
MODEL = TensorSpec("MODEL", "UINT8", (-1,))
PIPELINE_S = TensorSpec("PIPELINE_S", "FP32", (1,))  # seconds spent inside the pipeline model
# Pipeline models are decoupled (a stream of responses per request): after each denoising step a response with only
# PROGRESS = [step, steps]; the last response carries the output's tensors instead.
PROGRESS = TensorSpec("PROGRESS", "INT32", (2,))

IMAGES = Output(
    "images",
    tensors=(TensorSpec("IMAGES", "UINT8", (-1, -1, -1, 3)), MODEL, PIPELINE_S),  # N x H x W x RGB
    fields=(
        Field("output_format", Kind.CHOICE, "The image format of the answer", default="png", choices=IMAGE_FORMATS),
        Field("output_quality", Kind.INTEGER, "JPEG/WEBP quality", default=95, minimum=1, maximum=100),
        Field(
            "num_images",
            Kind.INTEGER,
            "More than 1 needs `Accept: application/json`",
            default=1,
            minimum=1,
            maximum=FromRoute("limits.max_num_images"),
            tensor=TensorSpec("NUM_IMAGES", "INT32", (1,)),
            keyword="num_images_per_prompt",
        ),
    ),
)

VIDEO = Output(
    "video",
    tensors=(TensorSpec("FRAMES", "UINT8", (-1, -1, -1, -1, 3)), MODEL, PIPELINE_S),  # N x F x H x W x RGB
    fields=(
        Field(
            "output_format",
            Kind.CHOICE,
            "The video format of the answer: animated WebP or H.264 MP4",
            default="webp",
            choices=VIDEO_FORMATS,
        ),
        Field(
            "output_quality", Kind.INTEGER, "WebP/MP4 quality; 100 is lossless WebP", default=95, minimum=1, maximum=100
        ),
        Field(
            "fps",
            Kind.INTEGER,
            "Frames per second of the answer",
            default=FromRoute("fps"),
            minimum=1,
            maximum=FromRoute("limits.max_fps"),
        ),
    ),
)


def _frames(name: str, description: str, **kw: Any) -> Field:
    return Field(
        name,
        Kind.INTEGER,
        description,
        minimum=FromRoute("limits.min_frames"),
        maximum=FromRoute("limits.max_frames"),
        multiple_of=4,
        remainder=1,
        **kw,
    )


def _clip_fields() -> tuple[Field, ...]:
    """A video answer's size and length (num_frames, or its other name length)."""
    return (
        _size("width"),
        _size("height"),
        _frames(
            "num_frames",
            "Frames of the clip: 4k+1",
            default=FromRoute("num_frames"),
            tensor=TensorSpec("NUM_FRAMES", "INT32", (1,)),
            keyword="num_frames",
        ),
        _frames("length", "Another name of num_frames (the playground sends it)", alias_of="num_frames"),
    )


KEY_FRAMES = 3  # reference images a reference-to-video request gives in all: three of one clip, one of each of several


def key_frame_budget(num_frames: int) -> int:
    """Reference images a clip of `num_frames` takes at most: KEY_FRAMES, and no more than its latent frames (VAE 4x
    in time), as WanVACEPipeline pads its mask for them out of the clip's own latent frames."""
    return min(KEY_FRAMES, (num_frames - 1) // 4 + 1)  # the inverse of frames_for_key_frames


def frames_for_key_frames(count: int) -> int:
    """The fewest frames (4k+1) of a clip that takes `count` reference images."""
    return 4 * (count - 1) + 1


def key_frames_per_video(videos: int, num_frames: int) -> int:
    """Key frames taken of each of `videos` reference clips; 0 when the clip is too short for one of each."""
    budget = key_frame_budget(num_frames)
    return 0 if videos > budget else budget // videos


def _reference_video(name: str, tensor: str, description: str, **kw: Any) -> Field:
    return Field(
        name,
        Kind.VIDEO,
        description,
        tensor=TensorSpec(tensor, "UINT8", (-1, -1, -1, 3), optional=True),  # one of the two fields crosses
        keyword="reference_images",
        **kw,
    )


TASKS: dict[Task, TaskSpec] = {
    spec.task: spec
    for spec in (
        TaskSpec(
            Task.TEXT_TO_IMAGE,
            own=(
                _prompt("prompt", "What to draw"),
                _size("width"),
                _size("height"),
                Field(
                    "aspect_ratio",
                    Kind.CHOICE,
                    "A preset size instead of width/height",
                    choices=FromRoute("aspect_ratios"),
                    sets=("width", "height"),
                    only_if="aspect_ratios",
                ),
            ),
            output=IMAGES,
            sample={"prompt": "a red fox in the snow"},
            size_fields=("width", "height"),
        ),
        TaskSpec(
            Task.TEXT_TO_VIDEO,
            own=(
                _prompt("prompt", "What to film"),
                *_clip_fields(),
            ),
            output=VIDEO,
            sample={"prompt": "a red fox running through the snow"},
            size_fields=("width", "height"),
        ),
        TaskSpec(
            Task.REFERENCE_TO_VIDEO,
            own=(
                _prompt("prompt", "What the character does in the new clip"),
                *_clip_fields(),
                _reference_video(
                    "reference_video",
                    "REFERENCE_VIDEO",
                    "The character to film: a clip whose key frames (first, middle, last) condition the new one",
                    either_of="reference_videos",
                ),
                _reference_video(
                    "reference_videos",
                    "REFERENCE_VIDEOS",
                    "Instead of reference_video: up to three clips of the character, a key frame of each",
                    items=3,
                    min_items=1,  # the alternative of reference_video: [] is no reference at all
                    max_length=FromRoute("limits.max_reference_videos"),
                ),
            ),
            output=VIDEO,
            sample={"prompt": "the character walks along a beach at sunset", "reference_video": SampleMedia()},
            size_fields=("width", "height"),
        ),
        TaskSpec(
            Task.EDIT,
            own=(
                _prompt("instruction", "The edit to make"),
                _image("source_image", "SOURCE_IMAGE", "The image to edit", required=True, keyword="image"),
                _image(
                    "reference_images",
                    "REFERENCE_IMAGE",
                    "More images for multi-image edits",
                    items=2,
                    max_length=FromRoute("limits.max_reference_images"),
                    keyword="image",
                ),
                _denoise(
                    "How much of the source to repaint: the last round(steps x denoise) of the steps run, at least one"
                ),
            ),
            output=IMAGES,
            sample={"instruction": "make it night", "source_image": SampleMedia()},
        ),
        TaskSpec(
            Task.INPAINT,
            own=(
                _prompt("prompt", "What to paint in the masked area"),
                _image("source_image", "SOURCE_IMAGE", "The image to repaint", required=True, keyword="image"),
                Field(
                    "mask_image",
                    Kind.MASK,
                    "White = repaint; the size of source_image",
                    required=True,
                    same_size_as="source_image",
                    tensor=TensorSpec("MASK_IMAGE", "UINT8", (-1, -1)),
                    keyword="mask_image",
                ),
                _denoise("How much of the masked area to repaint (diffusers' strength: at least one step runs)"),
            ),
            output=IMAGES,
            sample={"prompt": "a red fox", "source_image": SampleMedia(), "mask_image": SampleMedia()},
        ),
    )
}
