"""Request models, one per route, built from the registry's defaults and limits (api.md, "Request fields")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from registry import Route, Task

from .encoding import IMAGE_FORMATS

MAX_SEED = 2**32 - 1
DEFAULT_QUALITY = 95
OutputFormat = Literal[tuple(IMAGE_FORMATS)]  # type: ignore[valid-type]


class StrictRequest(BaseModel):
    # Unknown fields are errors (a typo never falls back to a default); no silent coercion ("5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)


class TextToImageRequest(StrictRequest):
    """The fields every text-to-image route takes; the per-route subclass fills in defaults and limits."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    cfg: float
    seed: int | None
    num_images: int
    output_format: str
    output_quality: int

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text, not only whitespace")
        return value

    @field_validator("negative_prompt", mode="before")
    @classmethod
    def _blank_negative_is_none(cls, value: object) -> object:
        # The product's client sends negative_prompt to every route, often as "": that means "none", not an error.
        return None if isinstance(value, str) and not value.strip() else value


def request_model(route: Route) -> type[TextToImageRequest]:
    if route.task is not Task.TEXT_TO_IMAGE:
        raise NotImplementedError(f"{route.path}: no request model for task {route.task}")
    lim = route.limits
    prompt = Annotated[str, Field(min_length=1, max_length=lim.max_prompt_chars)]
    negative = Annotated[str, Field(max_length=lim.max_prompt_chars)]  # blank means none (see the validator)
    size = Annotated[int, Field(ge=lim.min_size, le=lim.max_size, multiple_of=lim.size_multiple)]
    name = "".join(part.capitalize() for part in route.path.strip("/").replace(".", "-").split("-")) + "Request"
    return create_model(
        name,
        __base__=TextToImageRequest,
        __doc__=route.summary,
        prompt=(prompt, Field(description="What to draw")),
        negative_prompt=(negative | None, Field(default=None, description="What to avoid; used whenever CFG runs")),
        width=(size, Field(default=route.width, description=f"Multiple of {lim.size_multiple}")),
        height=(size, Field(default=route.height, description=f"Multiple of {lim.size_multiple}")),
        steps=(Annotated[int, Field(ge=1, le=lim.max_steps)], route.steps),
        cfg=(Annotated[float, Field(ge=lim.min_cfg, le=lim.max_cfg)], route.cfg),
        seed=(
            Annotated[int, Field(ge=0, le=MAX_SEED)] | None,
            Field(default=None, description="Drawn at random when absent; returned in x-seed"),
        ),
        num_images=(
            Annotated[int, Field(ge=1, le=lim.max_num_images)],
            Field(default=1, description="More than 1 needs `Accept: application/json`"),
        ),
        output_format=(OutputFormat, "png"),
        output_quality=(Annotated[int, Field(ge=1, le=100)], DEFAULT_QUALITY),
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
