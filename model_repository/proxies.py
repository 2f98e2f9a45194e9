"""Stand-ins for a diffusers pipeline's heavy modules whose forward calls the component's Triton model.

The stock pipeline keeps doing everything else (tokenising, scheduling, latent packing, CFG, post-processing), so a
served result can be compared with the plain pipeline. A proxy offers what the pipeline touches besides the call:
`.config` (the checkpoint's own config.json), `.dtype`, `.device`, `cache_context(...)`, and `decode` for the VAE.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from components.lora_set import LoraSet
from families import hooks
from registry import Component
from registry.tasks import LORAS

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
        # The request's LoRA set while a pipeline call runs (Pipelines sets it on `lora` components): every call
        # then carries it as the LORAS input.
        self.loras: LoraSet | None = None
        self._output_names = [s.name for s in component.outputs]
        # Float inputs travel in the precision the component runs in (FP32 ONNX on CPU, BF16 on the GPU).
        self._dtypes = {
            s.name: dtype if s.dtype == "FP32" and not s.exact else _TORCH[s.dtype] for s in component.inputs
        }

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @contextlib.contextmanager
    def cache_context(self, name: str, **state: Any) -> Iterator[None]:
        yield  # caching hooks (FasterCache, etc.) are not applied to served components

    def forward(self, *args: Any, **kwargs: Any) -> ComponentOutputs:
        named = dict(zip(self._input_names, args, strict=False))
        for key, value in kwargs.items():
            if key in self._input_names:
                named[key] = value
            elif not (key in _IGNORED_WHEN or value is None):
                raise TypeError(f"{self.component.triton_model} cannot take {key}={type(value).__name__}")
        return self.call(named)

    def call(self, named: Mapping[str, torch.Tensor | None]) -> ComponentOutputs:
        """One request to the component model: registry inputs by name (None = left out), outputs in order."""
        inputs = {
            name: named[name].to(self._device, self._dtypes[name])
            for name in self._input_names
            if named.get(name) is not None
        }
        if self.loras is not None:
            inputs[LORAS.name] = torch.frombuffer(bytearray(self.loras.encode()), dtype=torch.uint8)
        result = self.client.infer(self.component.triton_model, inputs, self._output_names)
        return ComponentOutputs(self._output_names, [result[n] for n in self._output_names])

    def decode(self, latent: torch.Tensor, return_dict: bool = False) -> ComponentOutputs:
        """The VAE's decode: the pipeline has already applied scaling and shift, as with the real module."""
        return self.forward(latent)


class HiddenStatesTextEncoderProxy(ComponentProxy):
    """A decoder LM used as text encoder: the pipelines read `outputs.hidden_states[-1]`, which the
    component answers as its only output."""

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        output_hidden_states: bool = True,
    ) -> SimpleNamespace:
        named = {"input_ids": input_ids, "attention_mask": attention_mask}
        if pixel_values is not None:
            named |= {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw}
        unexpected = [n for n in named if n not in self._input_names]
        if unexpected:
            raise TypeError(f"{self.component.triton_model} takes no {unexpected} (registry inputs)")
        (last,) = self.call(named)
        return SimpleNamespace(hidden_states=(last,), last_hidden_state=last)


class VaeProxy(ComponentProxy):
    """A VAE whose decoder is this component and whose encoder, where the family serves one, is another (role
    "vae.encoder"): `encode` answers the encoder's moments as the same DiagonalGaussianDistribution the stock
    `encode` returns, so the pipeline samples or takes the mode with its own generator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder: ComponentProxy | None = None

    def encode(self, sample: torch.Tensor, return_dict: bool = True) -> SimpleNamespace:
        if self.encoder is None:
            raise TypeError(f"{self.component.triton_model}: no VAE encoder component in this family")
        (moments,) = self.encoder.call({"sample": sample})
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(moments))


def proxies_for(
    family: str,
    components: Mapping[str, Component],
    checkpoint_dir: Path,
    client: ComponentClient,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, ComponentProxy]:
    """role -> proxy for the pipeline's constructor, of the class the family folder names for its exporter
    (its proxies.py; ComponentProxy by default). A component whose role is "<role>.<part>" joins that role's proxy
    as its attribute `part`, which the proxy's class declares (a VAE's encoder, a VAE decoder's later steps)."""
    classes = hooks(family, "proxies", "PROXIES")
    proxies = {
        role: classes.get(c.exporter, ComponentProxy)(c, checkpoint_dir, client, device, dtype)
        for role, c in components.items()
    }
    for role in [r for r in proxies if "." in r]:
        owner, part = role.split(".", 1)
        holder = proxies.get(owner)
        if not hasattr(holder, part):
            raise TypeError(f"{family}: a {role} component needs a {owner} proxy that takes a {part!r}, got {holder!r}")
        setattr(holder, part, proxies.pop(role))
    return proxies
