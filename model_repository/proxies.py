"""Stand-ins for a diffusers pipeline's heavy modules whose forward calls the component's Triton model.

The stock pipeline keeps doing everything else (tokenising, scheduling, latent packing, CFG, post-processing), so a
served result can be compared with the plain pipeline. A proxy offers what the pipeline touches besides the call:
`.config` (the checkpoint's own config.json), `.dtype`, `.device`, `cache_context(...)`, and `decode` for the VAE.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from diffusers.configuration_utils import FrozenDict

from registry import Component

_TORCH = {"FP32": torch.float32, "INT64": torch.int64, "INT32": torch.int32}
# Arguments the pipelines pass that carry no tensor for the component when they hold these values.
_IGNORED_WHEN = {"return_dict": None, "output_hidden_states": None, "joint_attention_kwargs": None}


class ComponentClient(Protocol):
    def infer(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]: ...


class ComponentOutputs(tuple):
    """The component's outputs, by position (`out[0]`) and by registry name (`out.pooler_output`)."""

    _names: tuple[str, ...]

    def __new__(cls, names: list[str], tensors: list[torch.Tensor]) -> ComponentOutputs:
        obj = super().__new__(cls, tensors)
        obj._names = tuple(names)
        return obj

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self[self._names.index(name)]
        except ValueError:
            raise AttributeError(name) from None


class ComponentProxy(torch.nn.Module):
    def __init__(
        self,
        component: Component,
        checkpoint_dir: Path,
        client: ComponentClient,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.component = component
        self.client = client
        self._device, self._dtype = device or torch.device("cpu"), dtype
        config_path = checkpoint_dir / component.subfolder / "config.json"
        self.config = FrozenDict(json.loads(config_path.read_text()))
        self._input_names = [s.name for s in component.inputs]
        self._output_names = [s.name for s in component.outputs]
        # Float inputs travel in the precision the component runs in (FP32 ONNX on CPU, BF16 on the GPU).
        self._dtypes = {s.name: dtype if s.dtype == "FP32" else _TORCH[s.dtype] for s in component.inputs}

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @contextlib.contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        yield  # caching hooks (FasterCache, etc.) are not applied to served components

    def forward(self, *args: Any, **kwargs: Any) -> ComponentOutputs:
        named = dict(zip(self._input_names, args, strict=False))
        for key, value in kwargs.items():
            if key in self._input_names:
                named[key] = value
            elif not (key in _IGNORED_WHEN or value is None):
                raise TypeError(f"{self.component.triton_model} cannot take {key}={type(value).__name__}")
        inputs = {
            name: named[name].to(self._device, self._dtypes[name])
            for name in self._input_names
            if named.get(name) is not None
        }
        result = self.client.infer(self.component.triton_model, inputs, self._output_names)
        return ComponentOutputs(self._output_names, [result[n] for n in self._output_names])

    def decode(self, latent: torch.Tensor, return_dict: bool = False) -> ComponentOutputs:
        """The VAE's decode: the pipeline has already applied scaling and shift, as with the real module."""
        return self.forward(latent)
