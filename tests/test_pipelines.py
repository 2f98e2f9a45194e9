"""The pipeline model's core (model_repository/pipelines.py) in this process: a family folder's own pipeline class
(its pipeline.py's PIPELINES, for models diffusers has no pipeline for) is what gets built and called, with the same
proxies and request arguments as a stock one.

The components run as their torch modules in this process (InProcessClient: what the component models compute,
without Triton); serving through Triton is tests/contract/test_routes.py."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch

import model_repository.pipelines as pipelines_module
from components.adapters import adapter_of
from model_repository.pipelines import NonFiniteOutput, PipelineRequest, Pipelines
from perf.perf_analyzer import request_values
from registry import ROUTES, component_of, family_of


class InProcessClient:
    """A ComponentClient that runs each component's adapter module here, inputs in the registry's order."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.modules: dict[str, torch.nn.Module] = {}
        self.calls: list[str] = []

    def infer(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        family, component = component_of(model)
        if model not in self.modules:
            adapter = adapter_of(family.name, component.exporter)
            self.modules[model] = adapter.load(self.checkpoint_dir / component.subfolder).eval()
        self.calls.append(model)
        with torch.no_grad():
            out = self.modules[model](*(inputs[s.name] for s in component.inputs if s.name in inputs))
        return dict(zip(outputs, out if isinstance(out, tuple) else (out,), strict=True))


def test_a_family_pipeline_class_is_built_and_called(monkeypatch, stack_dirs, model_repository) -> None:
    path = next(iter(ROUTES))
    route = ROUTES[path]
    family = family_of(route.checkpoint)
    spec = family.pipeline_for(route.task)
    built: list[list[str]] = []
    called: list[dict[str, Any]] = []

    stock = getattr(diffusers, spec.pipeline_class)

    class OwnPipeline(stock):  # type: ignore[misc, valid-type]
        """A family's own pipeline class: constructed like diffusers' own, the modules it takes named by its
        __init__ (here the stock one's), from the proxies and the light modules of the checkpoint folder."""

        @functools.wraps(stock.__init__)
        def __init__(self, **modules: Any) -> None:
            super().__init__(**modules)
            built.append(sorted(modules))

        def __call__(self, **kwargs: Any) -> Any:
            called.append(kwargs)
            return super().__call__(**kwargs)

    real_hooks = pipelines_module.hooks

    def hooks(name: str, module: str, attribute: str) -> dict:
        if (name, module, attribute) == (family.name, "pipeline", "PIPELINES"):
            return {spec.pipeline_class: OwnPipeline}
        return real_hooks(name, module, attribute)

    checkpoint_dir = stack_dirs.checkpoints / route.checkpoint
    values = request_values(path, size=route.limits.min_size, steps=2, seed=11)
    request = PipelineRequest(checkpoint=values.pop("CHECKPOINT"), tensors=values)

    def serve() -> tuple[Pipelines, InProcessClient, np.ndarray]:
        client = InProcessClient(checkpoint_dir)
        served = Pipelines(family.name, {route.checkpoint: checkpoint_dir}, {route.checkpoint: "local:x"}, client)
        images, label, _ = served(request)
        assert label == "local:x"
        return served, client, images

    _, _, stock = serve()
    monkeypatch.setattr(pipelines_module, "hooks", hooks)
    own, client, images = serve()
    assert isinstance(own.pipelines[route.checkpoint], OwnPipeline)
    roles = {role for role in family.components_for(route.checkpoint) if "." not in role}  # parts join a proxy
    assert len(built) == 1 and roles <= set(built[0])  # the proxies, by the roles the pipeline takes them as
    assert len(called) == 1 and called[0]["num_inference_steps"] == 2
    assert {c.triton_model for c in family.components_for(route.checkpoint).values()} <= set(client.calls)
    assert np.array_equal(images, stock)  # the family's class over the same proxies: the stock result


class NanTransformerClient(InProcessClient):
    """A transformer that diverges: its every output is NaN (what a broken schedule or an FP8 overflow yields)."""

    def infer(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        out = super().infer(model, inputs, outputs)
        if component_of(model)[1].role == "transformer":
            out = {k: torch.full_like(v, float("nan")) for k, v in out.items()}
        return out


def test_non_finite_pixels_are_never_answered_as_an_image(stack_dirs, model_repository) -> None:
    path = next(iter(ROUTES))
    route = ROUTES[path]
    family = family_of(route.checkpoint)
    checkpoint_dir = stack_dirs.checkpoints / route.checkpoint
    values = request_values(path, size=route.limits.min_size, steps=1, seed=11)
    request = PipelineRequest(checkpoint=values.pop("CHECKPOINT"), tensors=values)
    served = Pipelines(
        family.name, {route.checkpoint: checkpoint_dir}, {route.checkpoint: "x"}, NanTransformerClient(checkpoint_dir)
    )
    with pytest.raises(NonFiniteOutput):  # cast to uint8 it would have been an all-black 200
        served(request)
