"""The single source of truth for routes, checkpoints, model families, app groups and tasks.

The entries are declared by the family folders (families/) in the shapes of spec.py and collected by catalog.py;
each task's request fields and outputs are declared once in tasks.py.

The collected entries (catalog.py) load on first use, not with the package: a family folder imports the shapes
(`registry.spec`) while the catalog is collecting that same folder, e.g. under `python -m families.<folder>.x`.
"""

from typing import Any

from .contract import SOURCE_PARAMETER_PREFIX, invalid_request_message, parse_invalid_request
from .spec import (
    AppGroup,
    Checkpoint,
    Component,
    Declaration,
    Dim,
    Family,
    Guidance,
    Limits,
    Lora,
    PipelineModel,
    Route,
    Task,
    TensorSpec,
    UnsupportedRoute,
)
from .tasks import TASKS, Field, FromRoute, Kind, Output, SampleMedia, TaskSpec

# The collected entries (catalog.py), loaded on first use (__getattr__).
_CATALOG = (
    "CHECKPOINTS",
    "FAMILIES",
    "FOLDER_OF",
    "GPU_CAPABILITIES",
    "GROUPS",
    "LORAS",
    "ROUTES",
    "TENSORRT_VERSION",
    "UNSUPPORTED",
    "checkpoints_of",
    "component_of",
    "family_of",
    "loras_of",
    "merged_loras_of",
    "pipeline_model_of",
    "route",
    "routes_of",
    "sharing_model",
    "unsupported_of",
)

__all__ = [
    *_CATALOG,
    "SOURCE_PARAMETER_PREFIX",
    "TASKS",
    "AppGroup",
    "Checkpoint",
    "Component",
    "Declaration",
    "Dim",
    "Family",
    "Field",
    "FromRoute",
    "Guidance",
    "Kind",
    "Limits",
    "Lora",
    "Output",
    "PipelineModel",
    "Route",
    "SampleMedia",
    "Task",
    "TaskSpec",
    "TensorSpec",
    "UnsupportedRoute",
    "invalid_request_message",
    "parse_invalid_request",
    "task_of",
]


def __getattr__(name: str) -> Any:
    if name in _CATALOG:
        from . import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def task_of(route: Route) -> TaskSpec:
    """The declaration of the task `route` serves."""
    return TASKS[route.task]
