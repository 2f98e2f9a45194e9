"""The FLUX transformer as a component: tensors in, the pipeline's noise prediction out (the text encoders and the
VAE decoder use the shared adapters of components/adapters.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.adapters import Adapter, Shape, Wrapped


class FluxTransformer(Wrapped):
    """FLUX-schnell's inputs, as FluxPipeline passes them: 2-D img_ids/txt_ids, timestep already divided by 1000."""

    def run(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.model(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
    ) -> torch.Tensor:
        return self.run(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, None)


class FluxGuidedTransformer(FluxTransformer):
    """FLUX-dev: the same plus `guidance` (the guidance scale per batch row, fed to its guidance embedding)."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        return self.run(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance)


def _flux(path: Path) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(path)
    return (FluxGuidedTransformer if model.config.guidance_embeds else FluxTransformer)(model)


def _flux_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    from diffusers import FluxPipeline

    c = module.model.config
    b, t = s["batch"], s["t5_tokens"]
    # The pipeline's own position ids for a (latent_height/2) x (latent_width/2) grid of 2x2-packed patches.
    img_ids = FluxPipeline._prepare_latent_image_ids(b, s["latent_height"] // 2, s["latent_width"] // 2, "cpu", None)
    if img_ids.shape[0] != s["image_tokens"]:
        raise ValueError(f"image_tokens {s['image_tokens']} != (latent_height/2) * (latent_width/2) in {dict(s)}")
    inputs = [
        torch.randn(b, s["image_tokens"], c.in_channels),
        torch.randn(b, t, c.joint_attention_dim),
        torch.randn(b, c.pooled_projection_dim),
        torch.rand(b),  # sigma = timestep / 1000, as the pipeline passes it
        img_ids.float(),
        torch.zeros(t, 3),  # FLUX text ids are zeros
    ]
    if c.guidance_embeds:
        inputs.append(1.0 + 4.0 * torch.rand(b))  # guidance scales around dev's 3.5
    return tuple(inputs)


def flux_shape(batch: int, height: int, width: int, t5_tokens: int = 512, clip_tokens: int = 77) -> dict[str, int]:
    """Every FLUX symbolic dim for one request shape (VAE factor 8, 2x2 patches: image tokens = H/16 * W/16)."""
    return {
        "batch": batch,
        "clip_tokens": clip_tokens,
        "t5_tokens": t5_tokens,
        "image_tokens": (height // 16) * (width // 16),
        "latent_height": height // 8,
        "latent_width": width // 8,
        "height": height,
        "width": width,
    }


ADAPTERS: dict[str, Adapter] = {"flux_transformer": Adapter(_flux, _flux_example)}

# The shape traced (batch 2: torch.export would fix a size-1 dim) and a second one that differs in batch (1),
# resolution (non-square) and text length, so parity proves the graph really is dynamic.
PARITY_SHAPES: dict[str, tuple[Shape, Shape]] = {
    "flux": (
        flux_shape(batch=2, height=256, width=256, t5_tokens=256, clip_tokens=77),
        flux_shape(batch=1, height=256, width=384, t5_tokens=512, clip_tokens=20),
    ),
}
