"""The one registry: every checkpoint, model family, route and app group of the stack, collected from the family
folders (families/), plus the deployment facts they share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from families import declarations

from .spec import AppGroup, Checkpoint, Component, Family, Lora, Route, UnsupportedRoute

T = TypeVar("T")
_DECLARED = declarations()


def _collect(kind: str, entries: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """key -> entry over every folder; a key declared twice is an error (an app group may be, identically)."""
    out: dict[str, Any] = {}
    for key, entry in entries:
        if key in out and out[key] != entry:
            raise ValueError(f"registry: {kind} {key!r} is declared twice, differently")
        out[key] = entry
    return out


FAMILIES: dict[str, Family] = _collect("family", ((f.name, f) for d in _DECLARED.values() for f in d.families))
# model family -> the folder (families/<folder>) that declares it and holds its code
FOLDER_OF: dict[str, str] = {f.name: folder for folder, d in _DECLARED.items() for f in d.families}
CHECKPOINTS: dict[str, Checkpoint] = _collect(
    "checkpoint", ((c.key, c) for d in _DECLARED.values() for c in d.checkpoints)
)
LORAS: dict[str, Lora] = _collect("LoRA", ((lora.key, lora) for d in _DECLARED.values() for lora in d.loras))
ROUTES: dict[str, Route] = _collect("route", ((r.path, r) for d in _DECLARED.values() for r in d.routes))
UNSUPPORTED: dict[str, UnsupportedRoute] = _collect(
    "route", ((r.path, r) for d in _DECLARED.values() for r in d.unsupported)
)
GROUPS: dict[str, AppGroup] = _collect("app group", ((g.name, g) for d in _DECLARED.values() for g in d.groups))

# The TensorRT that builds and runs our plans (the one in triton_modal.py's NGC image) and the GPUs we build for
# (H100 = 9.0): plans are named by both, so a plan never loads on a TensorRT or GPU it was not built for.
TENSORRT_VERSION = "10.13.3.9"
GPU_CAPABILITIES = ("9.0",)


def _check() -> None:
    """Every reference between entries resolves: a typo in a family folder fails at import, not in a request."""
    for c in CHECKPOINTS.values():
        if c.family not in FAMILIES:
            raise ValueError(f"checkpoint {c.key}: unknown family {c.family!r}")
    for lora in LORAS.values():
        if lora.family not in FAMILIES:
            raise ValueError(f"LoRA {lora.key}: unknown family {lora.family!r}")
    for r in ROUTES.values():
        if r.checkpoint not in CHECKPOINTS or r.group not in GROUPS:
            raise ValueError(f"route {r.path}: unknown checkpoint {r.checkpoint!r} or group {r.group!r}")
        family = FAMILIES[CHECKPOINTS[r.checkpoint].family]
        family.pipeline_for(r.task)  # the family serves the route's task
        if r.lora and not any(c.lora for c in family.components_for(r.checkpoint).values()):
            raise ValueError(f"route {r.path}: a LoRA route, but no component of {r.checkpoint} takes LoRAs")
    for u in UNSUPPORTED.values():
        if u.path in ROUTES or u.group not in GROUPS:
            raise ValueError(f"unsupported route {u.path}: also a served route, or unknown group {u.group!r}")
    models = [c.triton_model for f in FAMILIES.values() for c in (*f.components, *f.pipelines)]
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ValueError(f"Triton model names declared twice: {twice}")
    for f in FAMILIES.values():
        for c in f.components:
            unknown = [k for k in c.checkpoints if k not in CHECKPOINTS or CHECKPOINTS[k].family != f.name]
            if unknown or (c.merged_lora and c.merged_lora not in LORAS):
                raise ValueError(f"{c.triton_model}: checkpoints {unknown} or LoRA {c.merged_lora!r} not of {f.name}")


_check()


def route(path: str) -> Route:
    return ROUTES[path]


def family_of(checkpoint: str) -> Family:
    return FAMILIES[CHECKPOINTS[checkpoint].family]


def checkpoints_of(family: str) -> list[Checkpoint]:
    return [c for c in CHECKPOINTS.values() if c.family == family]


def routes_of(group: str) -> list[Route]:
    return [r for r in ROUTES.values() if r.group == group]


def unsupported_of(group: str) -> list[UnsupportedRoute]:
    return [u for u in UNSUPPORTED.values() if u.group == group]


def sharing_model(path: str) -> list[str]:
    """The other routes served by the same checkpoint (and pipeline model) as `path`."""
    r = ROUTES[path]
    return [o.path for o in ROUTES.values() if o.checkpoint == r.checkpoint and o.path != path]


def component_of(triton_model: str) -> tuple[Family, Component]:
    """The family and component a Triton component model serves."""
    for family in FAMILIES.values():
        for component in family.components:
            if component.triton_model == triton_model:
                return family, component
    raise KeyError(f"no component model {triton_model!r} in the registry")


def pipeline_model_of(path: str) -> str:
    route = ROUTES[path]
    return family_of(route.checkpoint).pipeline_for(route.task).triton_model


def merged_loras_of(checkpoint: str) -> list[str]:
    """The registry LoRAs merged at build time into the components serving `checkpoint` (its label names them)."""
    components = family_of(checkpoint).components_for(checkpoint).values()
    return sorted({c.merged_lora for c in components if c.merged_lora})


def loras_of(family: str) -> list[str]:
    """The registry LoRAs merged into some component of `family` at build time."""
    return sorted({c.merged_lora for c in FAMILIES[family].components if c.merged_lora})
