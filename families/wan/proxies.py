"""Wan's VAE proxy: the stock `_decode` loop over latent frames on the host, each step a call to the decoder
component models with the causal caches handed from one call to the next (adapters.py)."""

from __future__ import annotations

from typing import Any

import torch

from model_repository.proxies import ComponentOutputs, ComponentProxy, VaeProxy

from .adapters import FIRST_LATENT_FRAMES


class WanVaeProxy(VaeProxy):
    """`vae.decode(latents)` as WanPipeline calls it: the first two latent frames through this component, each later
    one through `decoder_step` (the "vae.decoder_step" component, joined by proxies_for)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder_step: ComponentProxy | None = None

    def decode(self, latent: torch.Tensor, return_dict: bool = False) -> ComponentOutputs:  # type: ignore[override]
        frames, step = latent.shape[2], self.decoder_step
        if frames < FIRST_LATENT_FRAMES or step is None:
            raise ValueError(f"{self.component.triton_model}: needs >= {FIRST_LATENT_FRAMES} latent frames and a step")
        sample, *caches = self.call({"latent": latent[:, :, :FIRST_LATENT_FRAMES]})
        chunks = [sample]
        for i in range(FIRST_LATENT_FRAMES, frames):
            named: dict[str, Any] = {"latent": latent[:, :, i : i + 1]}
            named |= {f"cache_{j}": cache for j, cache in enumerate(caches)}
            sample, *caches = step.call(named)
            chunks.append(sample)
        return ComponentOutputs(["sample"], [torch.cat(chunks, dim=2)])


# Component.exporter -> the proxy class for its component.
PROXIES: dict[str, type[ComponentProxy]] = {"wan_vae_decoder_first": WanVaeProxy}
