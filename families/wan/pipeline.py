"""WanPipeline's call: its guidance knob `guidance_scale` is true CFG's scale (api.md's `cfg` as is: CFG runs above
1, against negative_prompt, "" when none was sent); the two-expert checkpoint uses the same scale for both experts
(guidance_scale_2 left to its default, as WanPipeline documents)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def wan_call(pipe: Any, kwargs: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    kwargs["guidance_scale"] = kwargs.pop("true_cfg_scale")
    return kwargs


# Pipeline class -> how its call's keyword arguments are adapted (model_repository/pipelines.py applies it).
CALL_HOOKS: dict[str, Callable[[Any, dict[str, Any], torch.Generator], dict[str, Any]]] = {
    "WanPipeline": wan_call,
    "WanVACEPipeline": wan_call,
}
