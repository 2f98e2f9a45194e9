"""Qwen-Image's proxies: the transformer's `img_shapes` become real cos/sin rotary tables (and, for zero_cond_t
models, the modulate index) computed here, true CFG goes to Triton as one batch of two where the shapes allow, and
the VAE exposes the attribute the pipelines read."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from model_repository.proxies import ComponentProxy, HiddenStatesTextEncoderProxy, VaeProxy

from .rope import QwenRope, modulate_index_of


class QwenTransformerProxy(ComponentProxy):
    """Qwen-Image's transformer: `img_shapes` (a Python list) becomes the real cos/sin rotary tables and, for
    zero_cond_t models, the modulate index, computed here once per shape (rope.py).

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


class QwenVaeProxy(VaeProxy):
    """The Wan-style VAE of Qwen-Image: the pipelines also read its `temperal_downsample` (sic)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.temperal_downsample = list(self.config["temperal_downsample"])


# Component.exporter -> the proxy class for its component.
PROXIES: dict[str, type[ComponentProxy]] = {
    "qwen2_5_vl_text_encoder": HiddenStatesTextEncoderProxy,
    "qwen_transformer": QwenTransformerProxy,
    "qwen_vae_decoder": QwenVaeProxy,
}
