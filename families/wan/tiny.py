"""Tiny Wan checkpoints in the three diffusers layouts we serve: one transformer (Wan-AI/Wan2.1-T2V-14B-Diffusers),
two experts switched at a boundary timestep (Wan-AI/Wan2.2-T2V-A14B-Diffusers: `transformer` for the high-noise
steps, `transformer_2` for the rest, `boundary_ratio` 0.875 in model_index.json), and VACE
(Wan-AI/Wan2.1-VACE-14B-diffusers). The real module classes and config flags, widths small enough that a few steps of
a 5-frame 256x256 clip take seconds on a CPU.

What the real repos share is built from one seed, so the files are byte-identical across the tiny ones: the UMT5-XXL
encoder and its sentencepiece tokenizer (real: 24 layers of 4096, vocabulary 256,384) and the Wan2.1 VAE (real:
base_dim 96, dim_mult 1-2-4-4, 2 residual blocks per level, 16 latent channels, 8x spatial and 4x temporal). The tiny
VAE keeps the real depth (levels, residual blocks, temporal flags), so its causal-convolution caches are the ones
the real VAE has (adapters.py exports the decode and encode in steps over those caches).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from checkpoints.tokenizers_offline import train_t5_tokenizer

SHARED_SEED = 40
TRANSFORMER_SEEDS = {"transformer": 41, "transformer_2": 42, "vace": 43}
MAX_SEQUENCE_LENGTH = 512  # UMT5's text length in Wan (the pipelines pad every prompt to it)
TEXT_DIM = 32  # UMT5's d_model = the transformer's text_dim (real: 4096)

# UniPC with flow sigmas and flow prediction, as the real repos' scheduler_config.json; flow_shift 3.0 is Wan's
# setting for 480p.
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "solver_order": 2,
    "solver_type": "bh2",
    "predict_x0": True,
    "lower_order_final": True,
    "final_sigmas_type": "zero",
}
BOUNDARY_RATIO = 0.875  # Wan2.2-T2V-A14B: the high-noise expert serves timesteps >= 875


def tokenizer(out: Path) -> Any:
    from transformers import T5Tokenizer

    return T5Tokenizer.from_pretrained(train_t5_tokenizer(out, model_max_length=MAX_SEQUENCE_LENGTH))


def text_encoder(tok: Any) -> torch.nn.Module:
    """UMT5's encoder: per-layer relative attention biases (UMT5, unlike T5), gated GELU."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=0,
        )
    ).eval()


def vae() -> torch.nn.Module:
    """The Wan2.1 VAE's structure at a small width: 4 levels, 2 residual blocks each, temporal downsampling at the
    last two, the real latents_mean / latents_std (the class defaults)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
    ).eval()


def shared_modules(tokenizer_dir: Path) -> dict[str, Any]:
    tok = tokenizer(tokenizer_dir)
    torch.manual_seed(SHARED_SEED)
    encoder = text_encoder(tok)
    return {"tokenizer": tok, "text_encoder": encoder, "vae": vae()}


def _transformer_kwargs() -> dict[str, Any]:
    # Head dim 12 splits over (frames, height, width) as the real 128 does: 2 * (12 // 6) = 4 each for h and w.
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": TEXT_DIM,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
    }


def transformer(seed_of: str) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(TRANSFORMER_SEEDS[seed_of])
    return WanTransformer3DModel(**_transformer_kwargs()).eval()


def vace_transformer() -> torch.nn.Module:
    """VACE blocks beside layers 0 and 2 of 3 (real: every other of 40 layers); the control input is the VAE latent
    of the inactive and reactive halves (2 x 16 channels) plus the 8x8 mask folded into 64 channels."""
    from diffusers import WanVACETransformer3DModel

    torch.manual_seed(TRANSFORMER_SEEDS["vace"])
    return WanVACETransformer3DModel(**{**_transformer_kwargs(), "num_layers": 3}, vace_layers=[0, 2]).eval()


def _save(pipe: Any, out: Path, tokenizer_dir: Path) -> None:
    pipe.save_pretrained(out)
    # save_pretrained rewrites the tokenizer in its own format; the real repos also carry the sentencepiece model.
    shutil.copytree(tokenizer_dir, out / "tokenizer", dirs_exist_ok=True)


def build(layout: str, out: Path) -> None:
    """Write a tiny Wan checkpoint of `layout` ("wan2.1", "wan2.2-a14b", "vace") with the pipeline's own
    save_pretrained."""
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanVACEPipeline

    with tempfile.TemporaryDirectory() as tmp:
        shared = shared_modules(Path(tmp) / "tokenizer")
        scheduler = UniPCMultistepScheduler(**SCHEDULER)
        if layout == "vace":
            pipe = WanVACEPipeline(transformer=vace_transformer(), scheduler=scheduler, **shared)
        elif layout == "wan2.2-a14b":
            pipe = WanPipeline(
                transformer=transformer("transformer"),
                transformer_2=transformer("transformer_2"),
                boundary_ratio=BOUNDARY_RATIO,
                scheduler=scheduler,
                **shared,
            )
        else:
            pipe = WanPipeline(transformer=transformer("transformer"), scheduler=scheduler, **shared)
        _save(pipe, out, Path(tmp) / "tokenizer")


# Checkpoint.tiny -> its builder.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "wan2.1-t2v-14b": partial(build, "wan2.1"),
    "wan2.2-t2v-a14b": partial(build, "wan2.2-a14b"),
    "wan2.1-vace-14b": partial(build, "vace"),
}
