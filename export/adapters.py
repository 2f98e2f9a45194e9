"""One adapter per registry `Component.exporter`: loads the diffusers/transformers module from its checkpoint
subfolder and wraps it so its forward takes exactly the registry's inputs, in order, and returns its outputs.

The same wrappers are what ONNX sees and what the torch reference computes, so parity compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

Shape = Mapping[str, int]  # symbolic dim name -> size


class _ClipPooled(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False).pooler_output


class _T5Hidden(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False)[0]


class _FluxTransformer(torch.nn.Module):
    """FLUX-schnell's inputs (no guidance embedding); FLUX-dev's add `guidance` (_FluxGuidedTransformer)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def run(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance):
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

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids):
        return self.run(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, None)


class _FluxGuidedTransformer(_FluxTransformer):
    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance):
        return self.run(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance)


class _VaeDecoder(torch.nn.Module):
    """Decodes a raw latent: the pipeline has already undone the VAE's scaling and shift, as before vae.decode."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent, return_dict=False)[0]


def _clip(path: Path) -> torch.nn.Module:
    from transformers import CLIPTextModel

    return _ClipPooled(CLIPTextModel.from_pretrained(path))


def _t5(path: Path) -> torch.nn.Module:
    from transformers import T5EncoderModel

    return _T5Hidden(T5EncoderModel.from_pretrained(path))


def _flux(path: Path) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(path)
    return (_FluxGuidedTransformer if model.config.guidance_embeds else _FluxTransformer)(model)


def _vae(path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return _VaeDecoder(AutoencoderKL.from_pretrained(path))


def _ids(vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, dtype=torch.int64)


def _clip_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    return (_ids(module.model.config.vocab_size, s["batch"], s["clip_tokens"]),)


def _t5_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    return (_ids(module.model.config.vocab_size, s["batch"], s["t5_tokens"]),)


def _flux_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    b, n, t = s["batch"], s["image_tokens"], s["t5_tokens"]
    inputs = [
        torch.randn(b, n, c.in_channels),
        torch.randn(b, t, c.joint_attention_dim),
        torch.randn(b, c.pooled_projection_dim),
        torch.rand(b),
        torch.randint(0, 64, (n, 3)).float(),  # positions, as the pipeline's latent image ids
        torch.zeros(t, 3),  # FLUX text ids are zeros
    ]
    if c.guidance_embeds:
        inputs.append(torch.full((b,), 3.5))
    return tuple(inputs)


def _vae_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    return (torch.randn(s["batch"], c.latent_channels, s["latent_height"], s["latent_width"]),)


@dataclass(frozen=True)
class Adapter:
    load: Callable[[Path], torch.nn.Module]  # checkpoint subfolder -> wrapped module
    example: Callable[[torch.nn.Module, Shape], tuple[torch.Tensor, ...]]
    # Two concrete shapes: the first is traced (batch 2: torch.export fixes size-1 dims), the second checks that the
    # graph is really dynamic (other batch, resolution and text length).
    shapes: tuple[Shape, Shape]


_FLUX_IMAGE_A = {"image_tokens": 16 * 16, "latent_height": 32, "latent_width": 32}  # 256 x 256
_FLUX_IMAGE_B = {"image_tokens": 24 * 16, "latent_height": 48, "latent_width": 32}  # 384 x 256

ADAPTERS: dict[str, Adapter] = {
    "clip_text_encoder": Adapter(
        _clip, _clip_example, ({"batch": 2, "clip_tokens": 77}, {"batch": 3, "clip_tokens": 20})
    ),
    "t5_encoder": Adapter(_t5, _t5_example, ({"batch": 2, "t5_tokens": 256}, {"batch": 1, "t5_tokens": 512})),
    "flux_transformer": Adapter(
        _flux,
        _flux_example,
        ({"batch": 2, "t5_tokens": 256, **_FLUX_IMAGE_A}, {"batch": 1, "t5_tokens": 512, **_FLUX_IMAGE_B}),
    ),
    "vae_decoder": Adapter(_vae, _vae_example, ({"batch": 2, **_FLUX_IMAGE_A}, {"batch": 1, **_FLUX_IMAGE_B})),
}
