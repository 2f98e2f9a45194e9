"""Z-Image's proxies: the text encoder answers the states the pipeline reads (`hidden_states[-2]`), and the
transformer's list-of-items call becomes one request per item to the exported core, the host half (patching,
padding, rotary tables, unpatching) computed here with the model's own code (adapters.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from model_repository.proxies import ComponentProxy

from .adapters import core_inputs, core_sample


class PenultimateTextEncoderProxy(ComponentProxy):
    """Qwen3 as ZImagePipeline reads it: `text_encoder(...).hidden_states[-2]`, which the component answers as its
    only output (the last layer's states are never computed, so `hidden_states[-1]` is None).

    The pipeline pads every prompt to 512 tokens and keeps only the states of the real ones. Qwen3 is causal, so
    with padding on the right a real token never sees a pad: the component runs on the real tokens only (the
    longest row of the batch) and the pad positions come back as zeros, which the pipeline drops."""

    def forward(  # type: ignore[override]
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = True
    ) -> SimpleNamespace:
        mask = attention_mask.to(torch.int64)
        length, counts = mask.shape[1], mask.sum(-1, keepdim=True)
        real = int(counts.max().clamp(min=1))
        positions = torch.arange(length, device=mask.device)
        if torch.equal(mask, (positions < counts).to(torch.int64)):  # right-padded
            input_ids, mask = input_ids[:, :real], mask[:, :real]
        (penultimate,) = self.call({"input_ids": input_ids, "attention_mask": mask})
        if penultimate.shape[1] < length:
            penultimate = torch.nn.functional.pad(penultimate, (0, 0, 0, length - penultimate.shape[1]))
        return SimpleNamespace(hidden_states=(penultimate, None))


class ZImageTransformerProxy(ComponentProxy):
    """The stock transformer's call, `transformer(latents: list, timestep, captions: list)` with one (C, 1, H, W)
    latent and one (tokens, dim) caption per item, as one Triton request per item (with CFG the negative halves
    are items too). The host half runs the real ZImageTransformer2DModel's methods on a weightless (meta-device)
    instance: they read only its config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from diffusers import ZImageTransformer2DModel

        with torch.device("meta"):
            self.model = ZImageTransformer2DModel.from_config(dict(self.config))
        self.in_channels = self.config["in_channels"]

    def forward(  # type: ignore[override]
        self,
        x: list[torch.Tensor],
        t: torch.Tensor,
        cap_feats: list[torch.Tensor],
        return_dict: bool = False,
        **unused: Any,
    ) -> tuple[list[torch.Tensor]]:
        if any(v is not None for v in unused.values()):
            raise TypeError(f"{self.component.triton_model}: {sorted(unused)} not served")
        samples = []
        for latent, caption, timestep in zip(x, cap_feats, t, strict=True):
            # On the pipeline's device: on the GPU profile the host half stays on the GPU.
            named = core_inputs(self.model, latent.float(), caption.float(), timestep.reshape(1).float())
            size = named.pop("size")
            (tokens,) = self.call(named)
            samples.append(core_sample(self.model, tokens.float().to(latent.device), size))
        return (samples,)


# Component.exporter -> the proxy class for its component.
PROXIES: dict[str, type[ComponentProxy]] = {
    "qwen3_text_encoder": PenultimateTextEncoderProxy,
    "z_image_transformer": ZImageTransformerProxy,
}
