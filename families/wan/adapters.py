"""Wan's modules as tensor-only graphs: the UMT5 encoder, the transformer (either expert of Wan2.2, Wan2.1's only
one, or VACE's with its control input) and the VAE decoder and encoder, in steps.

The Wan VAE decodes one latent frame at a time (its `_decode` loops over them), each causal 3D convolution keeping
the last two frames it saw in a cache for the next one. Traced whole, that loop fixes the frame count (one exported
graph per clip length). So the decoder is exported as the two steps the loop is made of, each with its caches as
plain inputs and outputs, and the frame loop runs on the host (proxies.py):

- `WanVaeDecoderFirst`: latent frames 0 and 1 -> pixel frames 0..4 and every cache (the first frame is special:
  it is not upsampled in time, and a time upsampler starts with no cache of its own at frame 1);
- `WanVaeDecoderStep`: one more latent frame and the caches -> its 4 pixel frames and the new caches.

From frame 1 on every cache holds two frames, so both graphs have fixed cache frame counts and dynamic height and
width; any clip of 4k+1 frames (k >= 1) decodes through them, exactly as the stock loop does (the same modules on the
same tensors). The encoder (VACE's conditioning clips) is split the same way, 5 frames first then 4 per step; a
reference image, one frame, has a graph of its own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from components.adapters import Adapter, Shape, Wrapped, _token_ids

FIRST_LATENT_FRAMES = 2  # what WanVaeDecoderFirst takes
ENCODER_FIRST_FRAMES, ENCODER_STEP_FRAMES = 5, 4  # what WanVaeEncoderFirst and WanVaeEncoderStep take


class Umt5Hidden(Wrapped):
    """UMT5 encoder -> last hidden state; WanPipeline passes the attention mask and keeps only the real tokens."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, output_hidden_states=False).last_hidden_state


class WanTransformer(Wrapped):
    """hidden_states (batch, C, latent frames, latent H, latent W), timestep (batch,), encoder_hidden_states
    (batch, text tokens, text dim) -> the flow prediction of the same shape as hidden_states."""

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]


def _decode_chunk(vae: torch.nn.Module, latent: torch.Tensor, caches: list, first: bool) -> tuple[torch.Tensor, int]:
    """One iteration of AutoencoderKLWan._decode: a latent frame through post_quant_conv (1x1x1, per frame) and the
    decoder, `caches` updated in place; clamped as _decode clamps the whole clip. Returns the frames and how many
    caches the decoder used."""
    index = [0]
    out = vae.decoder(vae.post_quant_conv(latent), feat_cache=caches, feat_idx=index, first_chunk=first)
    return torch.clamp(out, min=-1.0, max=1.0), index[0]


def causal_convs(module: torch.nn.Module) -> int:
    """The causal 3D convolutions in `module`: those that keep a cache, and the residual shortcuts that do not."""
    return sum(1 for m in module.modules() if type(m).__name__ == "WanCausalConv3d")


class WanVaeDecoderFirst(Wrapped):
    """latent (batch, z, 2, h, w), latents_mean/std already undone -> (frames (batch, 3, 5, 8h, 8w), *caches)."""

    def forward(self, latent: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vae = self.model
        if vae.config.patch_size is not None:
            raise ValueError("the Wan2.2 VAE (patch_size) is not served yet: its decoder caches differ")
        caches: list = [None] * causal_convs(vae.decoder)  # at least one slot per cache the decoder keeps
        first, _ = _decode_chunk(vae, latent[:, :, :1], caches, first=True)
        second, used = _decode_chunk(vae, latent[:, :, 1:2], caches, first=False)
        return (torch.cat([first, second], dim=2), *caches[:used])


class WanVaeDecoderStep(Wrapped):
    """latent (batch, z, 1, h, w) and the caches of the frames before -> (frames (batch, 3, 4, 8h, 8w), *caches)."""

    def forward(self, latent: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        updated = list(caches)
        frames, used = _decode_chunk(self.model, latent, updated, first=False)
        if used != len(caches):
            raise ValueError(f"the decoder uses {used} caches, {len(caches)} were given")
        return (frames, *updated)


class WanVaceTransformer(Wrapped):
    """WanTransformer's inputs plus VACE's: control_hidden_states (batch, VACE channels, latent frames, latent H,
    latent W), the conditioning latents, and control_hidden_states_scale (one per VACE layer)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control_hidden_states: torch.Tensor,
        control_hidden_states_scale: torch.Tensor,
    ) -> torch.Tensor:
        return self.model(
            hidden_states,
            timestep,
            encoder_hidden_states,
            control_hidden_states=control_hidden_states,
            control_hidden_states_scale=control_hidden_states_scale,
            return_dict=False,
        )[0]


def _encode_chunk(vae: torch.nn.Module, frames: torch.Tensor, caches: list) -> tuple[torch.Tensor, int]:
    """One iteration of AutoencoderKLWan._encode: pixel frames through the encoder, `caches` updated in place, then
    quant_conv (1x1x1, per latent frame) as _encode applies it to the whole clip. Returns the moments (mean, then
    log-variance, as DiagonalGaussianDistribution takes them) and how many caches the encoder used."""
    index = [0]
    out = vae.encoder(frames, feat_cache=caches, feat_idx=index)
    return vae.quant_conv(out), index[0]


class WanVaeEncoderFirst(Wrapped):
    """The first 5 frames (batch, 3, 5, H, W) in [-1, 1] -> (moments (batch, 2z, 2, H/8, W/8), *caches): frame 0 on
    its own (it is not downsampled in time), then frames 1..4, after which every cache has its lasting shape."""

    def forward(self, sample: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vae = self.model
        if vae.config.patch_size is not None:
            raise ValueError("the Wan2.2 VAE (patch_size) is not served yet: its encoder caches differ")
        caches: list = [None] * causal_convs(vae.encoder)
        first, _ = _encode_chunk(vae, sample[:, :, :1], caches)
        second, used = _encode_chunk(vae, sample[:, :, 1:ENCODER_FIRST_FRAMES], caches)
        return (torch.cat([first, second], dim=2), *caches[:used])


class WanVaeEncoderStep(Wrapped):
    """4 more frames (batch, 3, 4, H, W) and the caches -> (moments of their latent frame, *caches)."""

    def forward(self, sample: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        updated = list(caches)
        moments, used = _encode_chunk(self.model, sample, updated)
        if used != len(caches):
            raise ValueError(f"the encoder uses {used} caches, {len(caches)} were given")
        return (moments, *updated)


class WanVaeEncoderImage(Wrapped):
    """One frame (batch, 3, 1, H, W), a VACE reference image -> its moments (batch, 2z, 1, H/8, W/8): the stock
    encode of a one-frame clip (no cache is read, and none is kept)."""

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        caches: list = [None] * causal_convs(self.model.encoder)
        moments, _ = _encode_chunk(self.model, sample, caches)
        return moments


def _umt5(path: Path) -> torch.nn.Module:
    from transformers import UMT5EncoderModel

    return Umt5Hidden(UMT5EncoderModel.from_pretrained(path))


def _transformer(path: Path) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    return WanTransformer(WanTransformer3DModel.from_pretrained(path))


def _vace_transformer(path: Path) -> torch.nn.Module:
    from diffusers import WanVACETransformer3DModel

    return WanVaceTransformer(WanVACETransformer3DModel.from_pretrained(path))


def _vae(path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(path)


def _umt5_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    ids = _token_ids(s["batch"], s["text_tokens"], c.vocab_size, None, c.eos_token_id, c.pad_token_id)
    return ids, (ids != c.pad_token_id).to(torch.int64)


def _transformer_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    b = s["batch"]
    return (
        torch.randn(b, c.in_channels, s["latent_frames"], s["latent_height"], s["latent_width"]),
        torch.rand(b) * 1000,  # the scheduler's timesteps, 0..1000
        torch.randn(b, s["text_tokens"], c.text_dim),
    )


def _vace_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    latent = (s["batch"], c.vace_in_channels, s["latent_frames"], s["latent_height"], s["latent_width"])
    return (*_transformer_example(module, s), torch.randn(latent), torch.rand(len(c.vace_layers)) + 0.5)


def _encoder_first_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    return (torch.rand(s["batch"], 3, 5, s["height"], s["width"]) * 2 - 1,)


def _encoder_step_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    """4 frames and the caches a real clip leaves: the first step run on random frames."""
    first = WanVaeEncoderFirst(module.model)
    with torch.no_grad():
        _, *caches = first(*_encoder_first_example(first, s))
    return (torch.rand(s["batch"], 3, 4, s["height"], s["width"]) * 2 - 1, *caches)


def _encoder_image_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    return (torch.rand(s["batch"], 3, 1, s["height"], s["width"]) * 2 - 1,)


def _first_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    z = module.model.config.z_dim
    return (torch.randn(s["batch"], z, FIRST_LATENT_FRAMES, s["latent_height"], s["latent_width"]),)


def _step_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    """A latent frame and the caches a real clip leaves: the first step run on random latents."""
    vae = module.model
    first = WanVaeDecoderFirst(vae)
    with torch.no_grad():
        _, *caches = first(*_first_example(first, s))
    return (torch.randn(s["batch"], vae.config.z_dim, 1, s["latent_height"], s["latent_width"]), *caches)


def wan_shape(batch: int, height: int, width: int, frames: int, text_tokens: int) -> dict[str, int]:
    """Every Wan symbolic dim for one request shape (VAE 8x spatial and 4x temporal)."""
    lh, lw = height // 8, width // 8
    return {
        "batch": batch,
        "text_tokens": text_tokens,
        "latent_frames": (frames - 1) // 4 + 1,
        "latent_height": lh,
        "latent_width": lw,
        "latent_height_x2": 2 * lh,
        "latent_width_x2": 2 * lw,
        "latent_height_x4": 4 * lh,
        "latent_width_x4": 4 * lw,
        "height": height,
        "width": width,
    }


ADAPTERS: dict[str, Adapter] = {
    "umt5_encoder": Adapter(_umt5, _umt5_example),
    "wan_transformer": Adapter(_transformer, _transformer_example),
    "wan_vae_decoder_first": Adapter(lambda p: WanVaeDecoderFirst(_vae(p)), _first_example),
    "wan_vae_decoder_step": Adapter(lambda p: WanVaeDecoderStep(_vae(p)), _step_example),
    "wan_vace_transformer": Adapter(_vace_transformer, _vace_example),
    "wan_vae_encoder_first": Adapter(lambda p: WanVaeEncoderFirst(_vae(p)), _encoder_first_example),
    "wan_vae_encoder_step": Adapter(lambda p: WanVaeEncoderStep(_vae(p)), _encoder_step_example),
    "wan_vae_encoder_image": Adapter(lambda p: WanVaeEncoderImage(_vae(p)), _encoder_image_example),
}

# Small clips: the VAE steps dominate an export's parity check on a CPU.
PARITY_SHAPES: dict[str, tuple[Shape, Shape]] = {
    "wan": (
        wan_shape(batch=2, height=128, width=128, frames=9, text_tokens=24),
        wan_shape(batch=1, height=144, width=128, frames=5, text_tokens=16),
    ),
}
