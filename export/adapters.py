"""One adapter per registry `Component.exporter`: loads the diffusers/transformers module from its checkpoint
subfolder and wraps it so its forward takes exactly the registry's inputs, in order, and returns its output the
way the pipeline reads it.

The same wrappers are what ONNX sees and what the torch reference computes, so parity compares like with like.
The wrapped module sits at `self.model`: ONNX initializer names are the torch parameter names prefixed "model."
(recorded in the manifest for LoRA refit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

Shape = Mapping[str, int]  # symbolic dim name -> size
INITIALIZER_PREFIX = "model."


class ClipPooled(torch.nn.Module):
    """CLIP text model -> pooler_output (the end-token state FluxPipeline reads as pooled_prompt_embeds)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False).pooler_output


class T5Hidden(torch.nn.Module):
    """T5 encoder -> last hidden state (FluxPipeline's prompt_embeds; it passes no attention mask)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False)[0]


class FluxTransformer(torch.nn.Module):
    """FLUX-schnell's inputs, as FluxPipeline passes them: 2-D img_ids/txt_ids, timestep already divided by 1000."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

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


class VaeDecoder(torch.nn.Module):
    """Decodes a raw latent: the pipeline has already undone the VAE's scaling and shift before vae.decode."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent, return_dict=False)[0]


def _clip(path: Path) -> torch.nn.Module:
    from transformers import CLIPTextModel

    return ClipPooled(CLIPTextModel.from_pretrained(path))


def _t5(path: Path) -> torch.nn.Module:
    from transformers import T5EncoderModel

    return T5Hidden(T5EncoderModel.from_pretrained(path))


def _flux(path: Path) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel.from_pretrained(path)
    return (FluxGuidedTransformer if model.config.guidance_embeds else FluxTransformer)(model)


def _vae(path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return VaeDecoder(AutoencoderKL.from_pretrained(path))


def _token_ids(batch: int, length: int, vocab: int, start: int | None, end: int, pad: int) -> torch.Tensor:
    """Rows like a tokenizer's padded output: [start] prompt tokens of varying length, end, padding."""
    specials = torch.tensor([end, pad, -1 if start is None else start])
    filler = next(i for i in range(vocab) if i not in specials)
    ids = torch.full((batch, length), pad, dtype=torch.int64)
    offset = 0 if start is None else 1
    for row in range(batch):
        body = torch.randint(0, vocab, (int(torch.randint(0, length - offset, ())),))
        body[torch.isin(body, specials)] = filler  # no special ids inside the prompt
        if start is not None:
            ids[row, 0] = start
        ids[row, offset : offset + len(body)] = body
        if offset + len(body) < length:
            ids[row, offset + len(body)] = end
    return ids


def _clip_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    # <|startoftext|> prompt <|endoftext|> then <|endoftext|> padding: the pooled state is taken at the first end.
    return (_token_ids(s["batch"], s["clip_tokens"], c.vocab_size, c.bos_token_id, c.eos_token_id, c.eos_token_id),)


def _t5_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    return (_token_ids(s["batch"], s["t5_tokens"], c.vocab_size, None, c.eos_token_id, c.pad_token_id),)


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


def _vae_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    return (torch.randn(s["batch"], c.latent_channels, s["latent_height"], s["latent_width"]),)


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


@dataclass(frozen=True)
class Adapter:
    load: Callable[[Path], torch.nn.Module]  # checkpoint subfolder -> wrapped module
    example: Callable[[torch.nn.Module, Shape], tuple[torch.Tensor, ...]]  # random inputs of one concrete shape


ADAPTERS: dict[str, Adapter] = {
    "clip_text_encoder": Adapter(_clip, _clip_example),
    "t5_encoder": Adapter(_t5, _t5_example),
    "flux_transformer": Adapter(_flux, _flux_example),
    "vae_decoder": Adapter(_vae, _vae_example),
}

# Per family: the shape traced (batch 2: torch.export would fix a size-1 dim) and a second one that differs in
# batch (1), resolution (non-square) and text length, so parity proves the graph really is dynamic.
PARITY_SHAPES: dict[str, tuple[Shape, Shape]] = {
    "flux": (
        flux_shape(batch=2, height=256, width=256, t5_tokens=256, clip_tokens=77),
        flux_shape(batch=1, height=256, width=384, t5_tokens=512, clip_tokens=20),
    ),
}
