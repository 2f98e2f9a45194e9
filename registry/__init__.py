"""The single source of truth for routes, checkpoints, model families and app groups."""

from .catalog import (
    CHECKPOINTS,
    FAMILIES,
    GROUPS,
    PIPELINE_INPUTS,
    PIPELINE_OUTPUTS,
    ROUTES,
    checkpoints_of,
    component_of,
    family_of,
    pipeline_model_of,
    route,
    routes_of,
)
from .contract import SOURCE_PARAMETER_PREFIX, invalid_request_message, parse_invalid_request
from .spec import AppGroup, Checkpoint, Component, Dim, Family, Guidance, Limits, Route, Task, TensorSpec

__all__ = [
    "CHECKPOINTS",
    "SOURCE_PARAMETER_PREFIX",
    "invalid_request_message",
    "parse_invalid_request",
    "FAMILIES",
    "GROUPS",
    "PIPELINE_INPUTS",
    "PIPELINE_OUTPUTS",
    "ROUTES",
    "AppGroup",
    "Checkpoint",
    "Component",
    "Dim",
    "Family",
    "Guidance",
    "Limits",
    "Route",
    "Task",
    "TensorSpec",
    "checkpoints_of",
    "component_of",
    "family_of",
    "pipeline_model_of",
    "route",
    "routes_of",
]
