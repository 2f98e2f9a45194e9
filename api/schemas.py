"""Request models, one per route, built from the registry's defaults and limits (api.md, "Request fields")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from registry import Route, Task

from .encoding import IMAGE_FORMATS

MAX_SEED = 2**32 - 1
DEFAULT_QUALITY = 95
OutputFormat = Literal[tuple(IMAGE_FORMATS)]  # type: ignore[valid-type]


class StrictRequest(BaseModel):
    # Unknown fields are errors (a typo never falls back to a default); no silent coercion ("5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain text, not only whitespace")
    return value


class GenerationRequest(StrictRequest):
    """What every generating route takes; the per-route subclass fills in fields, defaults and limits."""

    negative_prompt: str | None
    steps: int
    cfg: float
    seed: int | None
    num_images: int
    output_format: str
    output_quality: int

    @field_validator("negative_prompt", mode="before")
    @classmethod
    def _blank_negative_is_none(cls, value: object) -> object:
        # The product's client sends negative_prompt to every route, often as "": that means "none", not an error.
        return None if isinstance(value, str) and not value.strip() else value


class TextToImageRequest(GenerationRequest):
    prompt: str
    width: int
    height: int

    _has_text = field_validator("prompt")(_has_text)

    @model_validator(mode="after")
    def _aspect_ratio_alone(self) -> TextToImageRequest:
        # An explicit width/height with a preset is ambiguous: refuse it rather than pick one silently.
        if getattr(self, "aspect_ratio", None) is not None and {"width", "height"} & self.model_fields_set:
            error = PydanticCustomError("conflict", "conflicts with width/height: send one or the other")
            detail = InitErrorDetails(type=error, loc=("aspect_ratio",), input=self.aspect_ratio)  # type: ignore[attr-defined]
            raise ValidationError.from_exception_data(type(self).__name__, [detail])
        return self

    def size(self, route: Route) -> tuple[int, int]:
        """(width, height): the aspect_ratio preset if one was sent, else width/height (the route's by default)."""
        presets = {name: (w, h) for name, w, h in route.aspect_ratios}
        return presets.get(getattr(self, "aspect_ratio", None) or "", (self.width, self.height))


class EditRequest(GenerationRequest):
    instruction: str
    source_image: str
    reference_images: list[str] | None
    denoise: float

    _has_text = field_validator("instruction")(_has_text)


class InpaintRequest(GenerationRequest):
    prompt: str
    source_image: str
    mask_image: str
    denoise: float

    _has_text = field_validator("prompt")(_has_text)


def _common_fields(route: Route) -> dict[str, Any]:
    lim = route.limits
    return {
        "negative_prompt": (
            Annotated[str, Field(max_length=lim.max_prompt_chars)] | None,  # blank means none (see the validator)
            Field(default=None, description="What to avoid; used whenever CFG runs"),
        ),
        "steps": (Annotated[int, Field(ge=1, le=lim.max_steps)], route.steps),
        "cfg": (Annotated[float, Field(ge=lim.min_cfg, le=lim.max_cfg)], route.cfg),
        "seed": (
            Annotated[int, Field(ge=0, le=MAX_SEED)] | None,
            Field(default=None, description="Drawn at random when absent; returned in x-seed"),
        ),
        "num_images": (
            Annotated[int, Field(ge=1, le=lim.max_num_images)],
            Field(default=1, description="More than 1 needs `Accept: application/json`"),
        ),
        "output_format": (OutputFormat, "png"),
        "output_quality": (Annotated[int, Field(ge=1, le=100)], DEFAULT_QUALITY),
    }


def request_model(route: Route) -> type[GenerationRequest]:
    lim = route.limits
    text = Annotated[str, Field(min_length=1, max_length=lim.max_prompt_chars)]
    size = Annotated[int, Field(ge=lim.min_size, le=lim.max_size, multiple_of=lim.size_multiple)]
    image = Annotated[str, Field(min_length=1, description="base64 (PNG, JPEG or WEBP), data: prefix optional")]
    denoise = Annotated[float, Field(gt=0.0, le=1.0)]
    name = "".join(part.capitalize() for part in route.path.strip("/").replace(".", "-").split("-")) + "Request"
    fields: dict[str, Any]
    if route.task is Task.TEXT_TO_IMAGE:
        base: type[GenerationRequest] = TextToImageRequest
        fields = {
            "prompt": (text, Field(description="What to draw")),
            "width": (size, Field(default=route.width, description=f"Multiple of {lim.size_multiple}")),
            "height": (size, Field(default=route.height, description=f"Multiple of {lim.size_multiple}")),
        }
        if route.aspect_ratios:
            presets = ", ".join(f"{n} = {w}x{h}" for n, w, h in route.aspect_ratios)
            fields["aspect_ratio"] = (
                Literal[tuple(n for n, _, _ in route.aspect_ratios)] | None,  # type: ignore[misc]
                Field(default=None, description=f"A preset size instead of width/height: {presets}"),
            )
    elif route.task is Task.EDIT:
        base = EditRequest
        fields = {
            "instruction": (text, Field(description="The edit to make")),
            "source_image": (image, Field(description="The image to edit")),
            "reference_images": (
                Annotated[list[image], Field(max_length=lim.max_reference_images)] | None,  # type: ignore[valid-type]
                Field(default=None, description=f"Up to {lim.max_reference_images} more images for multi-image edits"),
            ),
            "denoise": (denoise, Field(default=route.denoise, description="How much of the source to repaint")),
        }
    elif route.task is Task.INPAINT:
        base = InpaintRequest
        fields = {
            "prompt": (text, Field(description="What to paint in the masked area")),
            "source_image": (image, Field(description="The image to repaint")),
            "mask_image": (image, Field(description="White = repaint; the size of source_image")),
            "denoise": (denoise, Field(default=route.denoise, description="How much of the masked area to repaint")),
        }
    else:
        raise NotImplementedError(f"{route.path}: no request model for task {route.task}")
    return create_model(
        name,
        __base__=base,
        __doc__=route.summary,
        **fields,
        **_common_fields(route),
    )


class ImageOut(BaseModel):
    mime_type: str
    width: int
    height: int
    data: str = Field(description="base64 of the encoded image")


class TimingsOut(BaseModel):
    queue_s: float = Field(description="Waiting for a slot of the route's app group")
    inference_s: float = Field(description="The Triton round trip")
    total_s: float = Field(description="Arrival to answer")


class GenerationAnswer(BaseModel):
    """The answer with `Accept: application/json` (api.md, "Responses")."""

    request_id: str
    route: str
    model: str
    seed: int
    images: list[ImageOut]
    timings: TimingsOut
    cold_start: bool
    cost_usd: float
    gpu_type: str
