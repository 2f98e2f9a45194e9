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

from components.qwen_rope import QwenRope, modulate_index_of
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
    def cache_context(self, name: str) -> Iterator[None]:
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
        result = self.client.infer(self.component.triton_model, inputs, self._output_names)
        return ComponentOutputs(self._output_names, [result[n] for n in self._output_names])

    def decode(self, latent: torch.Tensor, return_dict: bool = False) -> ComponentOutputs:
        """The VAE's decode: the pipeline has already applied scaling and shift, as with the real module."""
        return self.forward(latent)


class HiddenStatesTextEncoderProxy(ComponentProxy):
    """A decoder LM used as text encoder (Qwen2.5-VL): the pipelines read `outputs.hidden_states[-1]`, which the
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


class QwenTransformerProxy(ComponentProxy):
    """Qwen-Image's transformer: `img_shapes` (a Python list) becomes the real cos/sin rotary tables and, for
    zero_cond_t models, the modulate index, computed here once per shape (components/qwen_rope.py).

    True CFG as one batch of two where the shapes allow: the stock pipelines call the transformer twice per step,
    inside `cache_context("cond")` then `("uncond")`, with the same latents and the same two prompt embeddings every
    step. From the second step on, when both prompts have the same token count, the "cond" call sends both halves as
    one request and keeps the unconditional half for the "uncond" call that follows, if that call's inputs are the
    ones paired (same objects, equal timestep); anything else goes as its own request. Prompts of different lengths
    are not padded into one batch: the padding mask moves attention off the flash kernel, which on the H100 cost more
    than the saved round trip (perf/results/h100/qwen_image_*)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rope = QwenRope.from_config(self.config)
        self._context: str | None = None
        self._last_cond: tuple[torch.Tensor, torch.Tensor | None] | None = None  # embeds, mask of the last cond call
        self._pair: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None  # cond, uncond, uncond mask
        self._kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        self._context = name
        try:
            yield
        finally:
            self._context = None

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        img_shapes: list,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        attention_kwargs: dict | None = None,
        return_dict: bool = False,
        **unused: Any,
    ) -> tuple[torch.Tensor]:
        if guidance is not None or attention_kwargs or any(v is not None for v in unused.values()):
            raise TypeError(f"{self.component.triton_model}: guidance/attention_kwargs/{sorted(unused)} not served")
        if self._context == "uncond":
            kept = self._kept
            self._kept = None
            if (
                kept is not None
                and kept[0] is hidden_states
                and kept[1] is encoder_hidden_states
                and torch.equal(kept[2], timestep)
            ):
                return (kept[3],)
            if self._last_cond is not None:  # pair these embeddings with the cond ones from the next step on
                self._pair = (self._last_cond[0], encoder_hidden_states, encoder_hidden_states_mask)
        elif self._context == "cond":
            self._last_cond = (encoder_hidden_states, encoder_hidden_states_mask)
            if (
                self._pair is not None
                and self._pair[0] is encoder_hidden_states
                and self._pair[1].shape == encoder_hidden_states.shape
            ):
                _, uncond, uncond_mask = self._pair
                both = self._run(
                    torch.cat([hidden_states, hidden_states]),
                    torch.cat([encoder_hidden_states, uncond]),
                    _stack_masks((encoder_hidden_states, encoder_hidden_states_mask), (uncond, uncond_mask)),
                    torch.cat([timestep, timestep]),
                    img_shapes,
                )
                half = hidden_states.shape[0]
                self._kept = (hidden_states, uncond, timestep, both[half:])
                return (both[:half],)
        return (self._run(hidden_states, encoder_hidden_states, encoder_hidden_states_mask, timestep, img_shapes),)

    def _run(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor | None,
        timestep: torch.Tensor,
        img_shapes: list,
    ) -> torch.Tensor:
        batch, text_tokens = encoder_hidden_states.shape[:2]
        if encoder_hidden_states_mask is None:  # the stock forward treats no mask as all tokens valid
            encoder_hidden_states_mask = torch.ones(batch, text_tokens, dtype=torch.int64)
        image_rope, text_rope = self.rope(img_shapes, text_tokens, self._device)
        named = {
            "hidden_states": hidden_states,
            "encoder_hidden_states": encoder_hidden_states,
            "encoder_hidden_states_mask": encoder_hidden_states_mask,
            "timestep": timestep,
            "image_rope": image_rope,
            "text_rope": text_rope,
        }
        if "modulate_index" in self._input_names:
            # The pipelines build img_shapes per prompt, not per image: one row serves every image of the batch.
            named["modulate_index"] = modulate_index_of(img_shapes, self._device).expand(batch, -1)
        return self.call(named)[0]


def _stack_masks(*items: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor | None:
    """The text masks of equally long prompts as one batch; None (no masking) when neither has one."""
    if all(m is None for _, m in items):
        return None
    ones = [torch.ones(e.shape[:2], dtype=torch.int64, device=e.device) if m is None else m for e, m in items]
    return torch.cat([m.to(torch.int64) for m in ones])


class QwenVaeProxy(ComponentProxy):
    """The Wan-style VAE of Qwen-Image: decode by the decoder component; encode (edits, inpainting) by the encoder
    component, whose moments become the same DiagonalGaussianDistribution the stock `encode` returns, so the
    pipeline samples or takes the mode with its own generator."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperal_downsample = list(self.config["temperal_downsample"])  # the pipelines read it (sic)
        self.encoder: ComponentProxy | None = None

    def encode(self, sample: torch.Tensor, return_dict: bool = True) -> SimpleNamespace:
        if self.encoder is None:
            raise TypeError(f"{self.component.triton_model}: no VAE encoder component in this family")
        (moments,) = self.encoder.call({"sample": sample})
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(moments))


# Exporter -> the proxy class for its component (default ComponentProxy).
PROXIES: dict[str, type[ComponentProxy]] = {
    "qwen2_5_vl_text_encoder": HiddenStatesTextEncoderProxy,
    "qwen_transformer": QwenTransformerProxy,
    "qwen_vae_decoder": QwenVaeProxy,
}


def proxies_for(
    components: Mapping[str, Component],
    checkpoint_dir: Path,
    client: ComponentClient,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, ComponentProxy]:
    """role -> proxy for the pipeline's constructor; a "vae_encoder" component joins the "vae" proxy."""
    proxies = {
        role: PROXIES.get(c.exporter, ComponentProxy)(c, checkpoint_dir, client, device, dtype)
        for role, c in components.items()
    }
    encoder = proxies.pop("vae_encoder", None)
    if encoder is not None:
        proxies["vae"].encoder = encoder
    return proxies
