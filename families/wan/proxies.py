"""Wan's VAE proxy: the stock `_decode` loop over latent frames on the host, each step a call to the decoder
component models with the causal caches handed from one call to the next (adapters.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from model_repository.proxies import ComponentOutputs, ComponentProxy, VaeProxy

from .adapters import ENCODER_FIRST_FRAMES, ENCODER_STEP_FRAMES, FIRST_LATENT_FRAMES


class WanVaeProxy(VaeProxy):
    """`vae.decode(latents)` as WanPipeline calls it: the first two latent frames through this component, each later
    one through `decoder_step` (the "vae.decoder_step" component, joined by proxies_for). Where the checkpoint serves
    the encoder (VACE), `vae.encode(clip)`: a one-frame clip (a reference image) through `encoder_image`, a longer
    one through `encoder` (5 frames) then `encoder_step` (4 at a time), the caches handed on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder_step: ComponentProxy | None = None
        self.encoder_step: ComponentProxy | None = None
        self.encoder_image: ComponentProxy | None = None

    @property
    def temperal_downsample(self) -> list[bool]:
        # AutoencoderKLWan's attribute (sic), from which WanVACEPipeline derives its scale factors.
        return list(self.config["temperal_downsample"])

    def encode(self, sample: torch.Tensor, return_dict: bool = True) -> SimpleNamespace:  # type: ignore[override]
        frames = sample.shape[2]
        if self.encoder is None or self.encoder_step is None or self.encoder_image is None:
            raise TypeError(f"{self.component.triton_model}: this checkpoint serves no VAE encoder")
        if frames == 1:
            (moments,) = self.encoder_image.call({"sample": sample})
        elif (frames - ENCODER_FIRST_FRAMES) % ENCODER_STEP_FRAMES or frames < ENCODER_FIRST_FRAMES:
            raise ValueError(f"the Wan VAE encodes 1 or 4k+1 frames (k >= 1), got {frames}")
        else:
            moments, *caches = self.encoder.call({"sample": sample[:, :, :ENCODER_FIRST_FRAMES]})
            chunks = [moments]
            for start in range(ENCODER_FIRST_FRAMES, frames, ENCODER_STEP_FRAMES):
                named: dict[str, Any] = {"sample": sample[:, :, start : start + ENCODER_STEP_FRAMES]}
                named |= {f"cache_{j}": cache for j, cache in enumerate(caches)}
                moments, *caches = self.encoder_step.call(named)
                chunks.append(moments)
            moments = torch.cat(chunks, dim=2)
        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(moments))

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
