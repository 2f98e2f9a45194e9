"""Qwen-Image's components as tensor-only modules: the transformer with its rotary tables given as cos/sin inputs
(rope.py), the one-frame causal VAE's decoder and encoder, and Qwen2.5-VL as text encoder (torch only)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.adapters import Adapter, Shape, VaeDecoder, Wrapped


class QwenTransformer(Wrapped):
    """Qwen-Image's transformer on tensors only: the rotary tables come in as cos/sin inputs (rope.py)
    instead of being computed from the pipeline's Python `img_shapes`; the stock forward runs otherwise.

    timestep is already divided by 1000 and encoder_hidden_states_mask is the pipeline's prompt_embeds_mask (all
    ones where the pipeline passes None)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from .rope import use_given_tensors

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
        from .rope import halves_for_export

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
                encoder_hidden_states_mask=None,  # handed to the blocks by pos_embed.given (rope.GivenTensors)
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
    target image's tokens and 1 on the condition images' (rope.modulate_index_of)."""

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


def qwen_img_shapes(s: Shape) -> list[list[tuple[int, int, int]]]:
    """The `img_shapes` a Qwen pipeline would pass for shape `s`: the target image's (1, latent_height/2,
    latent_width/2) patch grid, plus same-size condition images when image_tokens is a multiple of it (edit)."""
    grid = (1, s["latent_height"] // 2, s["latent_width"] // 2)
    images, rest = divmod(s["image_tokens"], grid[1] * grid[2])
    if rest or not images:
        raise ValueError(f"image_tokens {s['image_tokens']} is not a multiple of (latent_height/2)*(latent_width/2)")
    return [[grid] * images] * s["batch"]


def _qwen_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    from .rope import QwenRope, modulate_index_of

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


ADAPTERS: dict[str, Adapter] = {
    "qwen_transformer": Adapter(_qwen, _qwen_example),
    "qwen_vae_decoder": Adapter(_qwen_vae_decoder, _qwen_vae_decoder_example),
    "qwen_vae_encoder": Adapter(_qwen_vae_encoder, _qwen_vae_encoder_example),
    "qwen2_5_vl_text_encoder": Adapter(_qwen_vl, _qwen_vl_example),
}

# Per family: the shape traced (batch 2: torch.export would fix a size-1 dim) and a second one that differs in batch
# (1), resolution (non-square) and text length, so parity proves the graph really is dynamic.
PARITY_SHAPES: dict[str, tuple[Shape, Shape]] = {
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
