"""Request models, one per route, built from its task's declared fields (registry/tasks.py) with the route's
defaults and limits (api.md, "Request fields"), and the JSON answer's model."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from registry import Field as TaskField
from registry import Kind, Route, TaskSpec, task_of
from registry.tasks import COMMON, LORA_FIELDS, MAX_LORA_SCALE, resolve

MEDIA_DESCRIPTION = "base64 (PNG, JPEG or WEBP), data: prefix optional"
VIDEO_DESCRIPTION = "base64 (MP4, WebM, MOV, MKV, animated WebP or GIF), data: prefix optional"


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain text, not only whitespace")
    return value


def _blank_is_none(value: object) -> object:
    # The product's client sends negative_prompt to every route, often as "": that means "none", not an error.
    return None if isinstance(value, str) and not value.strip() else value


class LoraItem(BaseModel):
    """One item of `loras` (api.md): a LoRA of the store by name, or an https URL of an allowed host."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str | None = Field(default=None, min_length=1, max_length=128, description="A file name in the LoRA store")
    url: str | None = Field(default=None, min_length=1, max_length=2048, description="https URL of an allowed host")
    scale: float = Field(default=1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)

    @model_validator(mode="after")
    def _one_source(self) -> LoraItem:
        if (self.name is None) == (self.url is None):
            raise ValueError("give exactly one of name and url")
        return self


def _remainder(multiple: int, remainder: int) -> AfterValidator:
    """value % multiple == remainder (num_frames is 4k+1), which JSON Schema's multipleOf cannot say."""

    def check(value: int) -> int:
        if value % multiple != remainder:
            raise ValueError(f"must be {multiple}k+{remainder}, e.g. {value - (value - remainder) % multiple}")
        return value

    return AfterValidator(check)


def _error(name: str, message: str, value: object) -> ValidationError:
    detail = InitErrorDetails(type=PydanticCustomError("conflict", message), loc=(name,), input=value)
    return ValidationError.from_exception_data("RequestBody", [detail])


class RequestBody(BaseModel):
    """What a client POSTs to a generating route; each route's subclass holds its task's fields."""

    # Unknown fields are errors (a typo never falls back to a default); no silent coercion ("5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)
    route: ClassVar[Route]
    task: ClassVar[TaskSpec]

    @model_validator(mode="after")
    def _presets_alone(self) -> RequestBody:
        # A preset (aspect_ratio) with an explicit value of a field it sets is ambiguous: refuse it, never pick one.
        for f in self.task.fields_of(self.route):
            if f.sets and getattr(self, f.name) is not None and set(f.sets) & self.model_fields_set:
                raise _error(f.name, f"conflicts with {'/'.join(f.sets)}: send one or the other", getattr(self, f.name))
        return self

    @model_validator(mode="after")
    def _one_name(self) -> RequestBody:
        # A field sent under both its names (num_frames and length): refuse it, never pick one.
        for f in self.task.fields_of(self.route):
            if f.alias_of and {f.name, f.alias_of} <= self.model_fields_set:
                raise _error(f.name, f"another name of {f.alias_of}: send one or the other", getattr(self, f.name))
        return self

    @model_validator(mode="after")
    def _either(self) -> RequestBody:
        # A field that is an alternative of another (reference_video or reference_videos): exactly one of them.
        for f in self.task.fields_of(self.route):
            if f.either_of is None:
                continue
            given = [name for name in (f.name, f.either_of) if getattr(self, name, None) is not None]
            if len(given) == 2:
                raise _error(f.either_of, f"send {f.name} or {f.either_of}, not both", getattr(self, f.either_of))
            if not given:
                raise _error(f.name, f"{f.name} or {f.either_of} is required", None)
        return self

    @model_validator(mode="after")
    def _one_lora(self) -> RequestBody:
        # api.md: a LoRA route takes exactly one of lora_id and lora_name (loras stack more on top of it).
        if not self.route.lora:
            return self
        lora_id, lora_name = getattr(self, "lora_id", None), getattr(self, "lora_name", None)
        if lora_id is not None and lora_name is not None:
            raise _error("lora_name", "send lora_id or lora_name, not both", lora_name)
        if lora_id is None and lora_name is None:
            raise _error("lora_id", "a LoRA route needs lora_id or lora_name", None)
        return self

    def values(self) -> dict[str, Any]:
        """Every field's value, by name (defaults applied)."""
        return {name: getattr(self, name) for name in type(self).model_fields}


def _annotation(f: TaskField, route: Route) -> Any:
    """The pydantic type of one field: its kind with its rules, `| None` where it may be left out."""
    rules: dict[str, Any] = {}
    for rule, key in (
        ("minimum", "ge"),
        ("exclusive_minimum", "gt"),
        ("maximum", "le"),
        ("multiple_of", "multiple_of"),
    ):
        value = resolve(getattr(f, rule), route)
        if value is not None:
            rules[key] = value
    extra: list[Any] = []
    if f.remainder:
        extra.append(_remainder(rules.pop("multiple_of"), f.remainder))
    if f.kind is Kind.TEXT:
        base: Any = str
        if not f.blank_is_none:  # a blank one is read as absent, so "" is valid: the schema must not say otherwise
            rules["min_length"] = 1
        if f.max_length is not None:
            rules["max_length"] = resolve(f.max_length, route)
        if f.not_blank:
            extra.append(AfterValidator(_has_text))
    elif f.kind is Kind.INTEGER:
        base = int
    elif f.kind is Kind.NUMBER:
        base = float
    elif f.kind is Kind.CHOICE:
        base = Literal[f.choices_of(route)]  # type: ignore[valid-type]
    elif f.kind is Kind.LORAS:
        return Annotated[list[LoraItem], Field(max_length=resolve(f.max_length, route))] | None
    else:  # media: checked and decoded (api/media.py, api/video_decoding.py) before the request queues
        base = str
        rules["min_length"] = 1
        rules["description"] = VIDEO_DESCRIPTION if f.kind is Kind.VIDEO else MEDIA_DESCRIPTION
    annotation: Any = Annotated[base, Field(**rules), *extra]
    if f.items is not None:
        sizes = {"min_length": f.min_items} if f.min_items else {}
        annotation = Annotated[list[annotation], Field(max_length=resolve(f.max_length, route), **sizes)]  # type: ignore[valid-type]
    if not f.required and resolve(f.default, route) is None:
        annotation = annotation | None
    if f.blank_is_none:
        annotation = Annotated[annotation, BeforeValidator(_blank_is_none)]
    return annotation


def _description(f: TaskField, route: Route) -> str:
    if f.sets:
        rows = ", ".join(f"{row[0]} = {'x'.join(str(v) for v in row[1:])}" for row in resolve(f.choices, route))
        return f"{f.description}: {rows}"
    return f.description


def _model_fields(route: Route) -> dict[str, Any]:
    spec = task_of(route)
    # The order request models have always listed: the common fields, the output's, the task's own; then LoRAs'.
    order = {f.name: i for i, f in enumerate((*COMMON, *spec.output.fields, *spec.own, *LORA_FIELDS))}
    fields: dict[str, Any] = {}
    for f in sorted(spec.fields_of(route), key=lambda f: order[f.name]):
        default = ... if f.required else resolve(f.default, route)
        fields[f.name] = (_annotation(f, route), Field(default=default, description=_description(f, route)))
    return fields


def request_model(route: Route) -> type[RequestBody]:
    name = "".join(part.capitalize() for part in route.path.strip("/").replace(".", "-").split("-")) + "Request"
    model = create_model(name, __base__=RequestBody, __doc__=route.summary, **_model_fields(route))
    model.route, model.task = route, task_of(route)
    return model


class ImageOut(BaseModel):
    mime_type: str
    width: int
    height: int
    data: str = Field(description="base64 of the encoded image")


class VideoOut(BaseModel):
    mime_type: str
    width: int
    height: int
    num_frames: int
    fps: int
    data: str = Field(description="base64 of the encoded video")


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
    images: list[ImageOut] | None = Field(default=None, description="Image routes' answer")
    video: VideoOut | None = Field(default=None, description="Video routes' answer")
    timings: TimingsOut
    cold_start: bool
    cost_usd: float
    gpu_type: str


class JobAccepted(BaseModel):
    """The answer to `Prefer: respond-async` (api.md, "Jobs"): where to follow the job."""

    id: str
    status_url: str = Field(description="GET: status and progress (also the Location header)")
    result_url: str = Field(description="GET: the answer once the job succeeded; 409 before")
