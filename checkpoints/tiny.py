"""Tiny random-weight checkpoints in the exact diffusers folder layout, so tests load them through the same
`from_pretrained` code that loads the real ones.

Seeded and cached: a folder is rebuilt only when missing or written by an older builder (BUILDER_VERSION).
Modules that the real repos share (FLUX-dev and -schnell have the same CLIP, T5 and VAE) are built from the same
seed so their files are byte-identical here too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .tokenizers_offline import train_clip_tokenizer, train_t5_tokenizer

BUILDER_VERSION = 1
_STAMP = "tiny-builder.json"
SHARED_SEED = 0


def _flux_shared_modules() -> dict[str, object]:
    """CLIP, T5, their tokenizers and the VAE, identical for both FLUX variants (as in the real repos)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(train_clip_tokenizer(Path(tmp) / "clip"))
        tokenizer_2 = T5Tokenizer.from_pretrained(train_t5_tokenizer(Path(tmp) / "t5"))
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
            hidden_act="quick_gelu",
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
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    # Four resolution levels like the real VAE, so vae_scale_factor is 8 and image sizes behave as in production.
    vae = AutoencoderKL(
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
    )
    return {
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": tokenizer_2,
        "vae": vae.eval(),
    }


def _flux(variant: str) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

        shared = _flux_shared_modules()
        torch.manual_seed({"schnell": 1, "dev": 2}[variant])
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2, as in FLUX.1
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5 width
            pooled_projection_dim=32,  # CLIP width
            guidance_embeds=variant == "dev",
            axes_dims_rope=(4, 6, 6),
        )
        # The schedulers of the real repos: schnell a fixed shift, dev a resolution-dependent one.
        if variant == "schnell":
            scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
        else:
            scheduler = FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=1000,
                shift=3.0,
                use_dynamic_shifting=True,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            )
        FluxPipeline(transformer=transformer.eval(), scheduler=scheduler, **shared).save_pretrained(out)

    return build


# tiny name (registry Checkpoint.tiny) -> builder writing a diffusers folder
BUILDERS: dict[str, Callable[[Path], None]] = {
    "flux-schnell": _flux("schnell"),
    "flux-dev": _flux("dev"),
}


def build_tiny(name: str, root: Path) -> Path:
    """The tiny checkpoint `name` under `root/name`, built once and reused while BUILDER_VERSION holds."""
    if name not in BUILDERS:
        raise KeyError(f"no tiny builder for {name!r}; known: {sorted(BUILDERS)}")
    out = root / name
    stamp = out / _STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("version") == BUILDER_VERSION:
        return out
    # Build beside the target and move it in, so an interrupted build never leaves a half folder behind.
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        BUILDERS[name](tmp)
        (tmp / _STAMP).write_text(json.dumps({"version": BUILDER_VERSION, "name": name}))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
