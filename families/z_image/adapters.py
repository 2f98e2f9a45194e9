"""Z-Image's transformer as one tensor-only module, so it exports to ONNX with dynamic resolution and caption length.

The stock `ZImageTransformer2DModel.forward` takes Python lists (one latent and one caption per item), pads each
sequence to a multiple of 32 behind `if pad_len > 0` (a guard on a symbolic length), builds position ids per item
and applies complex RoPE (`torch.polar`, `view_as_complex`). None of that exports. So the work splits the way the
serving side needs it:

- the host (`core_inputs`, the pipeline's proxy) runs the model's own `patchify_and_embed` and `rope_embedder`
  on the item: padded image patches and caption, their pad masks, and the RoPE tables as real (cos, sin) pairs;
- `ZImageCore` (the exported graph) runs the model's own modules on those tensors: timestep embedding, embedders,
  pad tokens, refiners, the unified layers and the final layer, with RoPE applied in real arithmetic
  (`ZImageRealRopeProcessor`);
- the host cuts the image tokens back to their unpadded count and unpatchifies (`core_sample`).

One item per call: the served Turbo path runs without guidance; with guidance, the two halves are two calls (their
caption lengths differ, and one item needs no attention mask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF, ZSingleStreamAttnProcessor

from components.adapters import Adapter, Shape, Wrapped
from families.qwen_image.rope import apply_rope_real

PATCH, F_PATCH = 2, 1  # the only patch sizes of the released checkpoints
KEY = f"{PATCH}-{F_PATCH}"


class ZImageRealRopeProcessor(ZSingleStreamAttnProcessor):
    """ZSingleStreamAttnProcessor (diffusers 0.42.1) with RoPE from (cos, sin) tables of shape (tokens, head_dim/2,
    2): the stock `__call__`'s steps in the same order, except that its nested complex `apply_rotary_emb` cannot be
    redirected."""

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        freqs_cis: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if freqs_cis is not None:
            query, key = apply_rope_real(query, freqs_cis), apply_rope_real(key, freqs_cis)
        dtype = query.dtype
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :]
        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        output = attn.to_out[0](hidden_states.flatten(2, 3).to(dtype))
        if len(attn.to_out) > 1:  # dropout
            output = attn.to_out[1](output)
        return output


class ZImageCore(Wrapped):
    """One padded item -> the final layer's image tokens.

    image_tokens (1, image_tokens, 2*2*C) patches, image_pad (1, image_tokens) bool, caption (1, caption_tokens,
    cap_feat_dim), caption_pad (1, caption_tokens) bool, timestep (1,), image_rope (image_tokens, head_dim/2, 2),
    caption_rope (caption_tokens, head_dim/2, 2) -> (1, image_tokens, 2*2*C). Token counts are multiples of 32."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        for block in (*model.noise_refiner, *model.context_refiner, *model.layers):
            block.attention.set_processor(ZImageRealRopeProcessor())

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_pad: torch.Tensor,
        caption: torch.Tensor,
        caption_pad: torch.Tensor,
        timestep: torch.Tensor,
        image_rope: torch.Tensor,
        caption_rope: torch.Tensor,
    ) -> torch.Tensor:
        m = self.model
        adaln = m.t_embedder(timestep * m.t_scale).type_as(image_tokens)
        image_pad, caption_pad = image_pad.bool(), caption_pad.bool()  # served as INT64 masks
        x = torch.where(image_pad.unsqueeze(-1), m.x_pad_token, m.all_x_embedder[KEY](image_tokens))
        for layer in m.noise_refiner:
            x = layer(x, None, image_rope, adaln)
        c = torch.where(caption_pad.unsqueeze(-1), m.cap_pad_token, m.cap_embedder(caption))
        for layer in m.context_refiner:
            c = layer(c, None, caption_rope)
        unified = torch.cat([x, c], dim=1)
        rope = torch.cat([image_rope, caption_rope], dim=0)
        for layer in m.layers:
            unified = layer(unified, None, rope, adaln)
        return m.all_final_layer[KEY](unified, c=adaln)[:, : image_tokens.shape[1]]


def core_inputs(model: torch.nn.Module, latent: torch.Tensor, caption: torch.Tensor, timestep: torch.Tensor) -> dict:
    """What the host computes for one item with the model's own code: latent (C, F, H, W), caption (tokens, dim),
    timestep (1,) -> ZImageCore's inputs by name, and the item's `size` for core_sample."""
    with torch.no_grad():
        x, cap, sizes, x_pos, cap_pos, x_pad, cap_pad = model.patchify_and_embed([latent], [caption], PATCH, F_PATCH)
        # Cut to the sequence lengths as the stock forward does (_prepare_sequence): a padded caption's position ids
        # are longer than the caption.
        image_rope, caption_rope = (
            torch.view_as_real(model.rope_embedder(p)).float()[: len(f)]
            for p, f in ((x_pos[0], x[0]), (cap_pos[0], cap[0]))
        )
    return {
        "image_tokens": x[0][None],
        "image_pad": x_pad[0][None],
        "caption": cap[0][None],
        "caption_pad": cap_pad[0][None],
        "timestep": timestep,
        "image_rope": image_rope,
        "caption_rope": caption_rope,
        "size": sizes[0],
    }


def core_sample(model: torch.nn.Module, tokens: torch.Tensor, size: tuple) -> torch.Tensor:
    """ZImageCore's output (1, image_tokens, 2*2*C) -> the model output for the item, (C, F, H, W): the model's own
    unpatchify, which drops the padding tokens."""
    (sample,) = model.unpatchify([tokens[0]], [size], PATCH, F_PATCH)
    return sample


class Qwen3Penultimate(Wrapped):
    """Qwen3 -> the hidden states before its last layer, which ZImagePipeline reads as `hidden_states[-2]`: the last
    layer and the final norm are dropped at load, so they are neither exported nor run."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        del model.layers[-1]
        model.config.num_hidden_layers -= 1
        model.norm = torch.nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _qwen3(path: Path) -> torch.nn.Module:
    from transformers import Qwen3Model

    return Qwen3Penultimate(Qwen3Model.from_pretrained(path))


def _qwen3_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    """Right-padded rows as the pipeline's tokenizer gives them: a prompt of varying length, then padding."""
    c = module.model.config
    batch, length = s["batch"], s["prompt_tokens"]
    ids = torch.randint(0, c.vocab_size, (batch, length))
    mask = torch.zeros(batch, length, dtype=torch.int64)
    for row in range(batch):
        mask[row, : length - 3 * row - 1] = 1
    return ids.masked_fill(mask == 0, c.eos_token_id), mask


def _z_image(path: Path) -> torch.nn.Module:
    from diffusers import ZImageTransformer2DModel

    return ZImageCore(ZImageTransformer2DModel.from_pretrained(path))


CORE_INPUTS = ("image_tokens", "image_pad", "caption", "caption_pad", "timestep", "image_rope", "caption_rope")


def _z_image_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    """One item as core_inputs makes it: a latent of the shape's size and a caption 5 tokens short of the shape's
    padded length (so the caption's padding runs too)."""
    c = module.model.config
    latent = torch.randn(c.in_channels, 1, s["latent_height"], s["latent_width"])
    caption = torch.randn(s["caption_tokens"] - 5, c.cap_feat_dim)
    inputs = core_inputs(module.model, latent, caption, torch.rand(1))
    got = (inputs["image_tokens"].shape[1], inputs["caption"].shape[1])
    if got != (s["image_tokens"], s["caption_tokens"]):
        raise ValueError(f"image/caption tokens {got} != the shape's {dict(s)}")
    return tuple(inputs[name].to(torch.int64) if name.endswith("_pad") else inputs[name] for name in CORE_INPUTS)


def z_image_shape(batch: int, height: int, width: int, prompt_tokens: int, caption_tokens: int) -> dict[str, int]:
    """Every Z-Image symbolic dim for one request shape (VAE factor 8, 2x2 patches padded to a multiple of 32)."""
    patches = (height // 16) * (width // 16)
    return {
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "caption_tokens": caption_tokens,
        "image_tokens": patches + (-patches) % SEQ_MULTI_OF,
        "latent_height": height // 8,
        "latent_width": width // 8,
        "height": height,
        "width": width,
    }


ADAPTERS: dict[str, Adapter] = {
    "qwen3_text_encoder": Adapter(_qwen3, _qwen3_example),
    "z_image_transformer": Adapter(_z_image, _z_image_example),
}

# Traced at batch 2 (torch.export would fix a size-1 dim), 256 image tokens and 64 caption tokens; checked again
# at batch 1, 256x272 (272 patches, padded to 288) and a caption of one block, so parity proves both lengths and the
# padding dynamic.
PARITY_SHAPES: dict[str, tuple[Shape, Shape]] = {
    "z-image": (
        z_image_shape(batch=2, height=256, width=256, prompt_tokens=96, caption_tokens=64),
        z_image_shape(batch=1, height=272, width=256, prompt_tokens=40, caption_tokens=32),
    ),
}
