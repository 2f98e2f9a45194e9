"""Request models, one per route, built from the registry's defaults and limits (api.md, "Request fields")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from registry import Route, Task

MAX_SEED = 2**32 - 1
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class _Strict(BaseModel):
    # Unknown fields are errors (a typo never falls back to a default); no silent type coercion ("5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)


class TextToImageBase(_Strict):
    @field_validator("prompt", check_fields=False)
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text, not only whitespace")
        return value


def _text(route: Route, required: bool) -> tuple:
    text = Annotated[str, Field(min_length=1, max_length=route.limits.max_prompt_chars)]
    return (text, ...) if required else (text | None, None)


def _size(route: Route, default: int) -> tuple:
    lim = route.limits
    return (Annotated[int, Field(ge=lim.min_size, le=lim.max_size, multiple_of=lim.size_multiple)], default)


def request_model(route: Route) -> type[BaseModel]:
    if route.task is not Task.TEXT_TO_IMAGE:
        raise NotImplementedError(route.task)
    lim = route.limits
    name = "".join(part.capitalize() for part in route.path.strip("/").replace(".", "-").split("-")) + "Request"
    return create_model(
        name,
        __base__=TextToImageBase,
        __doc__=route.summary,
        prompt=_text(route, required=True),
        negative_prompt=_text(route, required=False),
        width=_size(route, route.width),
        height=_size(route, route.height),
        steps=(Annotated[int, Field(ge=1, le=lim.max_steps)], route.steps),
        cfg=(Annotated[float, Field(ge=lim.min_cfg, le=lim.max_cfg)], route.cfg),
        seed=(Annotated[int, Field(ge=0, le=MAX_SEED)] | None, None),
        num_images=(Annotated[int, Field(ge=1, le=lim.max_num_images)], 1),
        output_format=(Literal["png", "jpeg", "webp"], "png"),
        output_quality=(Annotated[int, Field(ge=1, le=100)], 95),
    )
