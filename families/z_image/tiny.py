"""Tiny Z-Image-Turbo (Tongyi-MAI/Z-Image-Turbo): the real module classes, folder layout and config flags, widths
small enough that 8 steps at 256x256 take well under a second on a CPU.

The real repo: `ZImagePipeline` with a Qwen3-4B text encoder (`Qwen3Model`, hidden 2560, 36 layers; the pipeline
takes its second-to-last hidden states), Qwen2's byte-level BPE tokenizer with Qwen3's added tokens and a chat
template (the pipeline renders every prompt through it with `enable_thinking=True`), the FLUX VAE (16 latent
channels, its scaling and shift factors) and the single-stream `ZImageTransformer2DModel` (dim 3840, 30 layers,
2 refiner layers each for the image and the caption, 3-axis RoPE 32 + 48 + 48 of head dim 128).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from families.flux import tiny as flux_tiny
from families.qwen_image.tokenizer import QWEN2_OTHER_ADDED_TOKENS, train_qwen2_tokenizer

SEED = 20

# scheduler/scheduler_config.json of the real repo: a fixed shift of 3, no resolution-dependent shift.
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}

# Qwen3 adds its tool-response and thinking tags after Qwen2's added tokens (ids 151665..151668 in the real one).
QWEN3_OTHER_ADDED_TOKENS = (*QWEN2_OTHER_ADDED_TOKENS, "<tool_response>", "</tool_response>", "<think>", "</think>")

# What Qwen3's chat template renders for the conversations the pipeline sends (one user turn, a generation prompt):
# an empty thinking block only when thinking is disabled. The real template's tool and multi-turn branches are
# left out: the pipeline never sends those.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

TEXT_HIDDEN = 32  # Qwen3-4B's hidden size = the transformer's cap_feat_dim (real: 2560)
MAX_SEQUENCE_LENGTH = 512  # the pipeline pads every prompt to this many tokens


def tokenizer(out: Path) -> Any:
    from transformers import Qwen2Tokenizer

    train_qwen2_tokenizer(
        out,
        num_merges=600,
        model_max_length=131072,
        chat_template=CHAT_TEMPLATE,
        other_added_tokens=QWEN3_OTHER_ADDED_TOKENS,
    )
    return Qwen2Tokenizer.from_pretrained(out)


def text_encoder(tok: Any) -> torch.nn.Module:
    """Qwen3 without its LM head, as the real text_encoder/ folder. Real: 36 layers of 2560, 32 heads, 8 KV heads
    of dim 128, tied embeddings."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=-(-len(tok) // 64) * 64,  # padded like the real embedding (151936 rows)
        hidden_size=TEXT_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # grouped-query attention, as the real 32:8
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    return Qwen3Model(config).eval()


def vae() -> torch.nn.Module:
    """FLUX's VAE (Z-Image ships it): 16 latent channels, four levels, the real scaling and shift factors."""
    torch.manual_seed(SEED + 1)
    return flux_tiny.vae()


def transformer() -> torch.nn.Module:
    """The single-stream DiT with its image and caption refiners; head dim 32 split 8 + 12 + 12 over (frame, height,
    width) as the real 32 + 48 + 48 of 128."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(SEED + 2)
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=64,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=TEXT_HIDDEN,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 12, 12],
        axes_lens=[1024, 512, 512],
    ).eval()


def build(out: Path) -> None:
    """Write tiny Z-Image-Turbo to `out` with the pipeline's own save_pretrained."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer(Path(tmp) / "tokenizer")
        pipe = ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
            vae=vae(),
            text_encoder=text_encoder(tok),
            tokenizer=tok,
            transformer=transformer(),
        )
        pipe.save_pretrained(out)
        # save_pretrained rewrites the tokenizer as tokenizer.json only; the real layout also has these files.
        shutil.copytree(Path(tmp) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)


# Checkpoint.tiny -> its builder.
BUILDERS: dict[str, Callable[[Path], None]] = {"z-image-turbo": build}
