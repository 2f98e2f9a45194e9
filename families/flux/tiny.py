"""Tiny FLUX.1-schnell and FLUX.1-dev: the real module classes and folder layout, widths small enough that 28 steps
at 256x256 take well under a second on a CPU.

What the real repos share (CLIP, T5, their tokenizers, the VAE) is built from one seed so the files are
byte-identical in both; each transformer has its own seed, and only dev has the guidance embedding.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from checkpoints.tokenizers_offline import train_clip_tokenizer, train_t5_tokenizer

SHARED_SEED = 0
TRANSFORMER_SEEDS = {"schnell": 1, "dev": 2}
T5_MAX_LENGTH = 512  # the tokenizer must allow FLUX-dev's max_sequence_length (the registry's largest)

# The scheduler_config.json of the real repos (diffusers fills in the remaining defaults).
SCHEDULERS: dict[str, dict[str, Any]] = {
    "schnell": {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": False,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
    "dev": {
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,  # resolution-dependent shift: mu from the image token count
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
}


def vae() -> torch.nn.Module:
    """FLUX's VAE, drawn from the current RNG state (callers seed). Four resolution levels like the real VAE, so
    vae_scale_factor is 8 and image sizes behave as in production; 16 latent channels and the real scaling/shift,
    so the transformer sees FLUX's 64 packed channels."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=256,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def shared_modules(tokenizers_dir: Path) -> dict[str, Any]:
    """CLIP, T5, their tokenizers (trained into `tokenizers_dir`/tokenizer{,_2}) and the VAE, identical for both
    variants (as in the real repos)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    tokenizer = CLIPTokenizer.from_pretrained(train_clip_tokenizer(tokenizers_dir / "tokenizer"))
    tokenizer_2 = T5Tokenizer.from_pretrained(
        train_t5_tokenizer(tokenizers_dir / "tokenizer_2", model_max_length=T5_MAX_LENGTH)
    )
    torch.manual_seed(SHARED_SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",  # CLIP ViT-L/14's activation
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,  # T5 v1.1's buckets and distance, so 512 tokens behave as there
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=0,
        )
    )
    vae_ = vae()  # from the RNG state the text encoders left: the bytes of the tiny checkpoints so far
    return {
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": tokenizer_2,
        "vae": vae_,
    }


def transformer(variant: str) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(TRANSFORMER_SEEDS[variant])
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2, as in FLUX.1
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's width
        pooled_projection_dim=32,  # CLIP's width
        guidance_embeds=variant == "dev",
        axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim (real: 16 + 56 + 56 = 128)
    ).eval()


def build(variant: str, out: Path) -> None:
    """Write tiny FLUX.1-<variant> to `out` with FluxPipeline.save_pretrained."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    with tempfile.TemporaryDirectory() as tmp:
        pipe = FluxPipeline(
            transformer=transformer(variant),
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS[variant]),
            **shared_modules(Path(tmp)),
        )
        pipe.save_pretrained(out)
        # save_pretrained rewrites the tokenizers as tokenizer.json only; the trained folders also hold the files
        # of the real layout (CLIP's vocab.json/merges.txt, T5's spiece.model).
        for name in ("tokenizer", "tokenizer_2"):
            shutil.copytree(Path(tmp) / name, out / name, dirs_exist_ok=True)


# Checkpoint.tiny -> the builder writing that folder.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "flux-schnell": partial(build, "schnell"),
    "flux-dev": partial(build, "dev"),
}
