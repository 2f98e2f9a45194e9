"""The Wan VAE in steps (adapters.py), in torch: the decoder's first-frames and next-frame steps, and the encoder's,
looped over a clip with their caches handed on, compute exactly what the stock AutoencoderKLWan.decode / encode
compute on the whole clip (the same modules on the same tensors), at several clip lengths and sizes."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from checkpoints.source import resolve
from families.wan import decoder_cache_scales, encoder_cache_shapes
from families.wan.adapters import (
    WanVaeDecoderFirst,
    WanVaeDecoderStep,
    WanVaeEncoderFirst,
    WanVaeEncoderImage,
    WanVaeEncoderStep,
)


@pytest.fixture(scope="module")
def vae(stack_dirs) -> AutoencoderKLWan:
    checkpoint = resolve("wan2.1-t2v-14b", "tiny", stack_dirs.checkpoints).path
    return AutoencoderKLWan.from_pretrained(checkpoint / "vae").eval()


@pytest.mark.parametrize(("latent_frames", "h", "w"), [(2, 4, 6), (4, 6, 4)])
def test_decoder_steps_are_the_stock_decode(vae, latent_frames: int, h: int, w: int) -> None:
    torch.manual_seed(latent_frames)
    latent = torch.randn(1, vae.config.z_dim, latent_frames, h, w)
    with torch.no_grad():
        expected = vae.decode(latent, return_dict=False)[0]
        sample, *caches = WanVaeDecoderFirst(vae)(latent[:, :, :2])
        chunks = [sample]
        for i in range(2, latent_frames):
            sample, *caches = WanVaeDecoderStep(vae)(latent[:, :, i : i + 1], *caches)
            chunks.append(sample)
    assert torch.equal(torch.cat(chunks, dim=2), expected)
    # The registry declares each cache at its scale of the latent (families/wan/__init__.py).
    assert [c.shape[-2:] for c in caches] == [(h * s, w * s) for s in decoder_cache_scales()]


@pytest.mark.parametrize(("frames", "height", "width"), [(5, 32, 48), (13, 48, 32)])
def test_encoder_steps_are_the_stock_encode(vae, frames: int, height: int, width: int) -> None:
    torch.manual_seed(frames)
    video = torch.rand(1, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        expected = vae.encode(video).latent_dist.parameters
        moments, *caches = WanVaeEncoderFirst(vae)(video[:, :, :5])
        chunks = [moments]
        for start in range(5, frames, 4):
            moments, *caches = WanVaeEncoderStep(vae)(video[:, :, start : start + 4], *caches)
            chunks.append(moments)
    assert torch.equal(torch.cat(chunks, dim=2), expected)
    # The registry declares each cache at its scale of the pixels and the frames it keeps (families/wan/__init__.py).
    assert [tuple(c.shape[-3:]) for c in caches] == [
        (kept, height // scale, width // scale) for scale, kept in encoder_cache_shapes()
    ]


def test_a_reference_image_encodes_as_the_stock_one_frame_clip(vae) -> None:
    image = torch.rand(1, 3, 1, 40, 56) * 2 - 1
    with torch.no_grad():
        assert torch.equal(WanVaeEncoderImage(vae)(image), vae.encode(image).latent_dist.parameters)
