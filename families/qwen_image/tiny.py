"""Tiny Qwen-Image-2512, Qwen-Image-Edit-2511 and the Qwen-Image-Lightning 4-step LoRA: the real module classes,
folder layouts and config flags, widths small enough that 4 steps at 256x256 take well under a second on a CPU.

What the real repos share (the Qwen2.5-VL text encoder with its vision tower, its tokenizer, the VAE) is built from
one seed, so those folders are byte-identical in both; each transformer has its own seed, and only the edit one has
`zero_cond_t` (Qwen-Image-Edit-2511's transformer config sets it: the reference images' tokens are modulated with
timestep 0). The tokenizer makes each pipeline's template prefix exactly as many tokens as the real one does (34 for
text-to-image, 64 for edit), so the pipelines' hard-coded `prompt_template_encode_start_idx` holds unchanged.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .tokenizer import train_qwen2_tokenizer

SHARED_SEED = 10
TRANSFORMER_SEEDS = {"2512": 11, "edit-2511": 12}
LORA_SEED = 13

# scheduler/scheduler_config.json of the real repos (diffusers fills in the remaining defaults).
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "invert_sigmas": False,
    "stochastic_sampling": False,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
# The real VAE's per-channel latent statistics (Wan 2.1's), which the pipelines read from its config.
LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip

TEXT_HIDDEN = 32  # Qwen2.5-VL's hidden size = the transformer's joint_attention_dim (real: 3584)
# Qwen2VLProcessor's image processor settings of the real processor/ folder (min 56x56, max 16384 28x28 patches).
IMAGE_PROCESSOR: dict[str, Any] = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's, as in the real preprocessor_config.json
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# Qwen2-VL's chat format: turns in <|im_start|>role ... <|im_end|>, images and videos as vision placeholders.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LIGHTNING_FILE = "Qwen-Image-Lightning-4steps-V1.0.safetensors"
# The 12 linears per block that the real Lightning LoRA adapts (60 blocks x 12 = 720 lora_down/lora_up pairs there),
# named as in diffusers' QwenImageTransformer2DModel with no prefix: `transformer_blocks.<i>.<module>.lora_down.weight`,
# `.lora_up.weight` and a scalar `.alpha`, which diffusers' Qwen LoRA converter turns into lora_A/lora_B.
LIGHTNING_MODULES = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
)
LIGHTNING_RANK = 8
LIGHTNING_ALPHA = 1.0  # alpha / rank = 1/8, as the released Lightning LoRAs (rank 64, alpha 8)
LIGHTNING_UP_STD = 4.0  # big enough that fusing visibly changes a 4-step image, small enough to stay finite


def prompt_templates() -> dict[str, tuple[str, int]]:
    """pipeline class name -> (prompt template, leading tokens it drops), read from diffusers itself so the tokenizer
    follows the installed pipelines rather than a copy of their strings."""
    from diffusers import QwenImageEditInpaintPipeline, QwenImageEditPlusPipeline, QwenImagePipeline

    out = {}
    for cls in (QwenImagePipeline, QwenImageEditPlusPipeline, QwenImageEditInpaintPipeline):
        # Built empty: __init__ only sets the template attributes when no module is given.
        components = {name: None for name in cls._get_signature_keys(cls)[0]}
        pipe = cls(**components)
        out[cls.__name__] = (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx)
    return out


def template_prefix(template: str) -> str:
    """The part of a prompt template that the pipeline drops: the system turn and the opening of the user turn.
    (QwenImageEditInpaintPipeline's template has the image placeholder after it, which is kept, as in the real
    model.)"""
    opening = "<|im_start|>user\n"
    return template[: template.index(opening) + len(opening)]


def tokenizer(out: Path) -> Any:
    """Qwen2's byte-level BPE, trained so every word of the pipelines' templates is one token (as in the real
    151k vocabulary), with a compact Qwen2-VL chat template."""
    from transformers import Qwen2Tokenizer

    templates = [t for t, _ in prompt_templates().values()]
    train_qwen2_tokenizer(out, templates, num_merges=600, chat_template=CHAT_TEMPLATE)
    return Qwen2Tokenizer.from_pretrained(out)


def text_encoder(tok: Any) -> torch.nn.Module:
    """Qwen2.5-VL with a working vision tower (the edit prompts carry images), its special token ids taken from the
    tokenizer. Real: 28 layers of 3584 (28 heads, 4 KV heads), a 32-layer ViT of 1280 with full attention every
    8th block."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab_size = -(-len(tok) // 64) * 64  # padded like the real embedding (152064 rows for 151665 tokens)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,  # grouped-query attention, as the real 28:4
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            # Multimodal RoPE over (time, height, width): sections sum to head_dim / 2 (real: 16 + 24 + 24 of 128).
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
            "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 24,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],  # window attention, then full attention, as the real every 8th block
            "tokens_per_second": 2,
        },
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(SHARED_SEED)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def vae() -> torch.nn.Module:
    """The Qwen-Image (Wan 2.1) causal 3D VAE: four levels with three downsampling flags, so vae_scale_factor is 8
    as in production; 16 latent channels with the real latents_mean / latents_std. Real base_dim is 96."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(SHARED_SEED + 1)
    return AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
    ).eval()


def transformer(variant: str) -> torch.nn.Module:
    """QwenImageTransformer2DModel with the real patching and flags; blocks of 2x16 instead of 60 of 24x128: two for
    text to image, one for edits, whose pipelines always work at ~1 MP with each condition image's tokens in the same
    sequence (8-12k tokens a step on a CPU)."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(TRANSFORMER_SEEDS[variant])
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,  # 16 latent channels packed 2x2
        out_channels=16,
        num_layers=1 if variant == "edit-2511" else 2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # (frame, height, width); sums to attention_head_dim (real: 16 + 56 + 56 = 128)
        zero_cond_t=variant == "edit-2511",
        use_additional_t_cond=False,  # Qwen-Image-Layered's flags, off in both
        use_layer3d_rope=False,
    ).eval()


def shared_modules(tmp: Path) -> dict[str, Any]:
    """Text encoder, tokenizer (trained into `tmp`/tokenizer) and VAE, identical for both variants."""
    tok = tokenizer(tmp / "tokenizer")
    return {"text_encoder": text_encoder(tok), "tokenizer": tok, "vae": vae()}


def write_processor(tokenizer_dir: Path, out: Path) -> None:
    """The processor/ folder of Qwen-Image-Edit: the tokenizer's files, the image processor's
    preprocessor_config.json and the video processor's config.

    Written as files rather than by Qwen2VLProcessor.save_pretrained: transformers 5.24 will not construct that
    processor without torchvision (its video processor needs it), which this environment lacks.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    shutil.copytree(tokenizer_dir, out, dirs_exist_ok=True)
    image_processor = Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    image_processor.save_pretrained(out)  # saved as "Qwen2VLImageProcessor", the real file's type
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
        "merge_size": 2,
        "patch_size": 14,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": IMAGE_PROCESSOR["max_pixels"], "shortest_edge": IMAGE_PROCESSOR["min_pixels"]},
        "temporal_patch_size": 2,
    }
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2, sort_keys=True) + "\n")


def build(variant: str, out: Path) -> None:
    """Write tiny Qwen-Image-<variant> to `out` with the pipeline's own save_pretrained: "2512" as
    QwenImagePipeline, "edit-2511" as QwenImageEditPlusPipeline (which QwenImageEditInpaintPipeline loads too)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImagePipeline
    from diffusers.utils import logging

    edit = variant == "edit-2511"
    with tempfile.TemporaryDirectory() as tmp:
        modules = shared_modules(Path(tmp))
        common = {"transformer": transformer(variant), "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER)}
        if edit:
            # No processor object (see write_processor): saved as [null, null], its entry is set below.
            pipe = QwenImageEditPlusPipeline(processor=None, **common, **modules)
        else:
            pipe = QwenImagePipeline(**common, **modules)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # not "processor=None ... cannot be saved": written by hand below
        try:
            pipe.save_pretrained(out)
        finally:
            logging.set_verbosity(verbosity)
        # save_pretrained rewrites the tokenizer as tokenizer.json only; the trained folder also has the files of
        # the real layout (vocab.json, merges.txt).
        shutil.copytree(Path(tmp) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
        if edit:
            write_processor(out / "tokenizer", out / "processor")
            index = json.loads((out / "model_index.json").read_text())
            index["processor"] = ["transformers", "Qwen2VLProcessor"]
            (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def lightning_state_dict() -> dict[str, torch.Tensor]:
    """A random LoRA for the tiny 2512 transformer in the real Lightning file's key layout and dtypes (fp32)."""
    base = transformer("2512")
    linears = dict(base.named_modules())
    generator = torch.Generator().manual_seed(LORA_SEED)
    tensors: dict[str, torch.Tensor] = {}
    for block in range(len(base.transformer_blocks)):
        for module in LIGHTNING_MODULES:
            name = f"transformer_blocks.{block}.{module}"
            layer = linears[name]
            assert isinstance(layer, torch.nn.Linear), name
            down = torch.randn(LIGHTNING_RANK, layer.in_features, generator=generator) / layer.in_features**0.5
            up = torch.randn(layer.out_features, LIGHTNING_RANK, generator=generator) * LIGHTNING_UP_STD
            tensors[f"{name}.lora_down.weight"] = down
            tensors[f"{name}.lora_up.weight"] = up
            tensors[f"{name}.alpha"] = torch.tensor(LIGHTNING_ALPHA)
    return tensors


def build_lightning(out: Path) -> None:
    """Write the tiny Lightning LoRA as the single .safetensors file of the real repo (named as the real one)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(lightning_state_dict(), out / LIGHTNING_FILE)


# Checkpoint.tiny / Lora.tiny -> the builder writing that folder.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen-image-2512": partial(build, "2512"),
    "qwen-image-edit-2511": partial(build, "edit-2511"),
    "qwen-image-lightning": build_lightning,
}
