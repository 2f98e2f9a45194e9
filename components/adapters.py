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


class Wrapped(torch.nn.Module):
    """An adapter's module: the diffusers/transformers module at `.model`, so ONNX initializer names are the torch
    parameter names prefixed INITIALIZER_PREFIX."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


class ClipPooled(Wrapped):
    """CLIP text model -> pooler_output (the end-token state FluxPipeline reads as pooled_prompt_embeds)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False).pooler_output


class T5Hidden(Wrapped):
    """T5 encoder -> last hidden state (FluxPipeline's prompt_embeds; it passes no attention mask)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False)[0]


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


class VaeDecoder(Wrapped):
    """Decodes a raw latent: the pipeline has already undone the VAE's scaling and shift before vae.decode."""

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent, return_dict=False)[0]


class QwenTransformer(Wrapped):
    """Qwen-Image's transformer on tensors only: the rotary tables come in as cos/sin inputs (components/qwen_rope.py)
    instead of being computed from the pipeline's Python `img_shapes`; the stock forward runs otherwise.

    timestep is already divided by 1000 and encoder_hidden_states_mask is the pipeline's prompt_embeds_mask (all
    ones where the pipeline passes None)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from .qwen_rope import use_given_tensors

        use_given_tensors(model)  # model.pos_embed now hands the stock forward the given tensors
        super().__init__(model)

    def run(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor,
        timestep: torch.Tensor,
        image_rope: torch.Tensor,
        text_rope: torch.Tensor,
        modulate_index: torch.Tensor | None,
    ) -> torch.Tensor:
        from .qwen_rope import halves_for_export

        tracing = torch.compiler.is_exporting() or torch.compiler.is_compiling()
        if not tracing and bool(encoder_hidden_states_mask.all()):
            # As the stock pipelines do: an all-ones mask is no mask, which keeps attention on the flash kernel
            # (a masked SDPA took 11% longer per Qwen-Image step on the H100). The exported graph keeps the input.
            encoder_hidden_states_mask = None
        given = self.model.pos_embed.given(image_rope, text_rope, encoder_hidden_states_mask, modulate_index)
        with given, halves_for_export(enabled=modulate_index is not None):
            return self.model(
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                encoder_hidden_states_mask=None,  # handed to the blocks by pos_embed.given (qwen_rope.GivenTensors)
                timestep=timestep,
                img_shapes=[],  # read only for the rope tables and modulate_index, both given instead
                return_dict=False,
            )[0]

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor,
        timestep: torch.Tensor,
        image_rope: torch.Tensor,
        text_rope: torch.Tensor,
    ) -> torch.Tensor:
        return self.run(
            hidden_states, encoder_hidden_states, encoder_hidden_states_mask, timestep, image_rope, text_rope, None
        )


class QwenZeroCondTransformer(QwenTransformer):
    """zero_cond_t models (Qwen-Image-Edit-2511): the same plus `modulate_index` (batch, image_tokens), 0 on the
    target image's tokens and 1 on the condition images' (qwen_rope.modulate_index_of)."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor,
        timestep: torch.Tensor,
        image_rope: torch.Tensor,
        text_rope: torch.Tensor,
        modulate_index: torch.Tensor,
    ) -> torch.Tensor:
        return self.run(
            hidden_states,
            encoder_hidden_states,
            encoder_hidden_states_mask,
            timestep,
            image_rope,
            text_rope,
            modulate_index,
        )


class QwenVaeDecoder(VaeDecoder):
    """One frame of Qwen-Image's causal 3-D VAE: latent (batch, z_dim, 1, h, w) -> sample (batch, 3, 1, 8h, 8w),
    what `vae.decode(latents, return_dict=False)[0]` gives (the pipeline has already undone latents_mean/std).

    The stock decode, feature cache included: with one frame its frame loop runs once and every cache branch is
    fixed at trace time, so height and width stay dynamic."""


class QwenVaeEncoder(Wrapped):
    """One frame: sample (batch, 3, 1, H, W) in [-1, 1] -> moments (batch, 2*z_dim, 1, H/8, W/8), the tensor the
    stock encode wraps in DiagonalGaussianDistribution (mean, then log-variance), so the serving side samples or
    takes the mode with its own generator exactly as the pipeline does."""

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.model.encode(sample, return_dict=False)[0].parameters


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


def _qwen(path: Path) -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    model = QwenImageTransformer2DModel.from_pretrained(path)
    if model.config.use_additional_t_cond:
        # Qwen-Image-Layered's additional_t_cond is no input of the registry's contract.
        raise ValueError(f"{path}: use_additional_t_cond models are not exportable yet")
    return (QwenZeroCondTransformer if model.config.zero_cond_t else QwenTransformer)(model)


def _qwen_vae(path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage.from_pretrained(path)


def _qwen_vae_decoder(path: Path) -> torch.nn.Module:
    return QwenVaeDecoder(_qwen_vae(path))


def _qwen_vae_encoder(path: Path) -> torch.nn.Module:
    return QwenVaeEncoder(_qwen_vae(path))


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


class QwenVlHidden(Wrapped):
    """Qwen2.5-VL as the Qwen-Image text encoder: the last hidden state (after the final norm), which the pipelines
    read as `outputs.hidden_states[-1]`; with pixel_values/image_grid_thw for edit prompts that show the images.

    Runs in torch on every profile (registry), so it has no ONNX export; the torch runtime loads it from here."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            output_hidden_states=True,
        )
        return out.hidden_states[-1]


def _qwen_vl(path: Path) -> torch.nn.Module:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return QwenVlHidden(Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval())


def _qwen_vl_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config.get_text_config()
    ids = torch.randint(0, c.vocab_size, (s["batch"], s["prompt_tokens"]))
    return ids, torch.ones_like(ids)


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


def qwen_img_shapes(s: Shape) -> list[list[tuple[int, int, int]]]:
    """The `img_shapes` a Qwen pipeline would pass for shape `s`: the target image's (1, latent_height/2,
    latent_width/2) patch grid, plus same-size condition images when image_tokens is a multiple of it (edit)."""
    grid = (1, s["latent_height"] // 2, s["latent_width"] // 2)
    images, rest = divmod(s["image_tokens"], grid[1] * grid[2])
    if rest or not images:
        raise ValueError(f"image_tokens {s['image_tokens']} is not a multiple of (latent_height/2)*(latent_width/2)")
    return [[grid] * images] * s["batch"]


def _qwen_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    from .qwen_rope import QwenRope, modulate_index_of

    c = module.model.config
    b, t = s["batch"], s["text_tokens"]
    img_shapes = qwen_img_shapes(s)
    image_rope, text_rope = QwenRope.from_config(c)(img_shapes, t)
    # Padded prompts: the longest row fills the text length (the pipeline pads to the batch's longest), the others
    # end earlier.
    lengths = [t, *torch.randint(1, t + 1, (b - 1,)).tolist()]
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).to(torch.int64)
    inputs = [
        torch.randn(b, s["image_tokens"], c.in_channels),
        torch.randn(b, t, c.joint_attention_dim),
        mask,
        torch.rand(b),  # sigma = timestep / 1000, as the pipeline passes it
        image_rope,
        text_rope,
    ]
    if c.zero_cond_t:
        inputs.append(modulate_index_of(img_shapes))
    return tuple(inputs)


def _qwen_vae_decoder_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    return (torch.randn(s["batch"], module.model.config.z_dim, 1, s["latent_height"], s["latent_width"]),)


def _qwen_vae_encoder_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    # An image as the pipeline's image processor gives it: values in [-1, 1].
    return (torch.rand(s["batch"], module.model.config.input_channels, 1, s["height"], s["width"]) * 2 - 1,)


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


def qwen_shape(batch: int, height: int, width: int, text_tokens: int, condition_images: int = 0) -> dict[str, int]:
    """Every Qwen-Image symbolic dim for one request shape (VAE factor 8, 2x2 patches: H/16 * W/16 image tokens
    per image; an edit request adds its condition images' tokens, here of the same size)."""
    return {
        "batch": batch,
        "text_tokens": text_tokens,
        "image_tokens": (1 + condition_images) * (height // 16) * (width // 16),
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
    "qwen_transformer": Adapter(_qwen, _qwen_example),
    "qwen_vae_decoder": Adapter(_qwen_vae_decoder, _qwen_vae_decoder_example),
    "qwen_vae_encoder": Adapter(_qwen_vae_encoder, _qwen_vae_encoder_example),
    "qwen2_5_vl_text_encoder": Adapter(_qwen_vl, _qwen_vl_example),
}

# Per family: the shape traced (batch 2: torch.export would fix a size-1 dim) and a second one that differs in
# batch (1), resolution (non-square) and text length, so parity proves the graph really is dynamic.
PARITY_SHAPES: dict[str, tuple[Shape, Shape]] = {
    "flux": (
        flux_shape(batch=2, height=256, width=256, t5_tokens=256, clip_tokens=77),
        flux_shape(batch=1, height=256, width=384, t5_tokens=512, clip_tokens=20),
    ),
    "qwen-image": (
        qwen_shape(batch=2, height=256, width=256, text_tokens=128),
        qwen_shape(batch=1, height=256, width=384, text_tokens=77),
    ),
    # Edit: the target image's tokens followed by its condition images' (one, then two).
    "qwen-image-edit": (
        qwen_shape(batch=2, height=256, width=256, text_tokens=128, condition_images=1),
        qwen_shape(batch=1, height=256, width=384, text_tokens=77, condition_images=2),
    ),
}
