"""Wan video (`/wan2.6`, `/wan2.6-lora`): "Wan 2.6" has no open weights (Alibaba Cloud serves it by API only), so
the product's routes serve the best open Wan in the diffusers layout: `/wan2.6` Wan2.2-T2V-A14B, two 14B experts
switched at a boundary timestep as WanPipeline does it; `/wan2.6-lora` Wan2.1-T2V-14B, one transformer, because a
character LoRA file (musubi-tuner, diffusers) adapts one transformer, while an A14B LoRA is a pair of files (high- and
low-noise expert) that one `lora_id` cannot name. `/wan2.6-r2v` is Wan2.1-VACE-14B: key frames of the reference
video(s) (sampled by the API) condition WanVACEPipeline as its reference images, in a new clip that follows the
prompt (VACE's control clip left empty: nothing of the reference's motion or scene is kept).

Components: UMT5-XXL (shared, the same file in every Wan repo), the transformer(s), and the Wan2.1 VAE decoder as two
graphs, its first frames and one more frame, with the causal caches between them as tensors (adapters.py says why):
the pipeline's VAE proxy (proxies.py) loops over the latent frames, so any clip length and size decodes. VACE adds
the encoder the same way (5 frames, then 4 per step) and a one-frame graph for its reference images.
"""

from __future__ import annotations

from dataclasses import replace

from registry.spec import (
    AppGroup,
    Checkpoint,
    Component,
    Declaration,
    Dim,
    Family,
    Guidance,
    Limits,
    PipelineModel,
    Route,
    Task,
    TensorSpec,
)
from registry.tasks import KEY_FRAMES

T2V = ("wan2.2-t2v-a14b", "wan2.1-t2v-14b")
VACE = "wan2.1-vace-14b"
ALL = (*T2V, VACE)  # the text encoder and the VAE are the same files in every Wan2.1-VAE repo
MAX_REFERENCE_IMAGES = KEY_FRAMES  # the key frames of the reference videos that condition VACE, at most
Z_DIM = 16  # latent channels of the Wan2.1 VAE (all three repos ship it)

# The Wan2.1 VAE decoder's structure (4 levels, 2 residual blocks each, time upsampling after the first two levels):
# each causal convolution's cache, by its spatial scale over the latent, in the order the decoder fills them.
DECODER_LEVELS, DECODER_RES_BLOCKS, TIME_UPSAMPLING = 4, 2, (True, True, False)


def decoder_cache_scales() -> tuple[int, ...]:
    scales = [1] * 5  # conv_in, the mid block's two residual blocks (two convolutions each)
    scale = 1
    for level in range(DECODER_LEVELS):
        scales += [scale] * (2 * (DECODER_RES_BLOCKS + 1))  # the up block's residual blocks
        if level < DECODER_LEVELS - 1:
            if TIME_UPSAMPLING[level]:
                scales.append(scale)  # the time upsampler's convolution, before the spatial 2x
            scale *= 2
    return (*scales, scale)  # the head's convolution, at pixel scale


TIME_DOWNSAMPLING = tuple(reversed(TIME_UPSAMPLING))  # the encoder's: after its last two levels' spatial halving


def encoder_cache_shapes() -> tuple[tuple[int, int], ...]:
    """The encoder's caches, in the order it fills them: (spatial scale below the pixels, frames kept). Every
    convolution keeps two frames, a time downsampler (stride 2 in time) one."""
    caches = [(1, 2)]  # conv_in
    scale = 1
    for level in range(DECODER_LEVELS):
        caches += [(scale, 2)] * (2 * DECODER_RES_BLOCKS)  # the down block's residual blocks
        if level < DECODER_LEVELS - 1:
            scale *= 2
            if TIME_DOWNSAMPLING[level]:
                caches.append((scale, 1))
    return (*caches, *[(scale, 2)] * 5)  # the mid block's two residual blocks, the head's convolution


_SIDES = {1: "latent_{}", 2: "latent_{}_x2", 4: "latent_{}_x4", 8: "{}"}  # by scale over the latent


def _cache(name: str, frames: int, latent_scale: int) -> TensorSpec:
    side = _SIDES[latent_scale]
    return TensorSpec(name, "FP32", ("batch", -1, frames, side.format("height"), side.format("width")))


def _caches(prefix: str) -> tuple[TensorSpec, ...]:
    """The decoder's caches as tensors: two frames each, channels fixed by the checkpoint."""
    return tuple(_cache(f"{prefix}{i}", 2, s) for i, s in enumerate(decoder_cache_scales()))


def _encoder_caches(prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(_cache(f"{prefix}{i}", kept, 8 // s) for i, (s, kept) in enumerate(encoder_cache_shapes()))


# Component.fp8_layers, measured on the H200 (perf/results/h200: 44.2 dB PSNR against eager BF16 over 30 steps): the
# self- and cross-attention projections and both FFN matmuls of every block; the condition embedder, the time
# projections (M = 1), the patch embedding and the output head stay BF16.
FP8_LAYERS = r"blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|blocks\.\d+\.ffn\.net\.(0\.proj|2)"

LATENT_HEIGHT = Dim("latent_height", 128 // 8, 480 // 8, 1280 // 8)  # parity runs at 128 px; routes start at 256
LATENT_WIDTH = Dim("latent_width", 128 // 8, 832 // 8, 1280 // 8)


_VIDEO_LATENT = ("batch", -1, "latent_frames", "latent_height", "latent_width")
# VACE's control input: the conditioning clip's latents and its mask, one scale per VACE layer.
_VACE_INPUTS = (
    TensorSpec("control_hidden_states", "FP32", _VIDEO_LATENT),
    TensorSpec("control_hidden_states_scale", "FP32", (-1,), exact=True),
)


def _transformer(triton_model: str, role: str, checkpoint: str, lora: bool = False, vace: bool = False) -> Component:
    video = _VIDEO_LATENT
    return Component(
        triton_model=triton_model,
        role=role,
        subfolder=role,
        exporter="wan_vace_transformer" if vace else "wan_transformer",
        checkpoints=(checkpoint,),
        inputs=(
            TensorSpec("hidden_states", "FP32", video),
            # UniPC's timesteps are fractional; the model embeds them in FP32.
            TensorSpec("timestep", "FP32", ("batch",), exact=True),
            TensorSpec("encoder_hidden_states", "FP32", ("batch", "text_tokens", -1)),
            *(_VACE_INPUTS if vace else ()),
        ),
        outputs=(TensorSpec("sample", "FP32", video),),
        precision="fp8",
        fp8_layers=FP8_LAYERS,
        accelerations=("compile_blocks",),
        lora=lora,
    )


def _encoder(triton_model: str, role: str, exporter: str, frames: int, latent_frames: int) -> Component:
    """A step of VACE's VAE encoder: `frames` pixel frames (and, after the first, the caches) -> their moments."""
    caches_in = _encoder_caches("cache_") if exporter == "wan_vae_encoder_step" else ()
    return Component(
        triton_model=triton_model,
        role=role,
        subfolder="vae",
        exporter=exporter,
        checkpoints=(VACE,),
        inputs=(TensorSpec("sample", "FP32", ("batch", 3, frames, "height", "width")), *caches_in),
        outputs=(
            TensorSpec("moments", "FP32", ("batch", 2 * Z_DIM, latent_frames, "latent_height", "latent_width")),
            *_encoder_caches("next_cache_"),
        ),
    )


WAN = Family(
    name="wan",
    prompt_tokenizer="tokenizer",
    lora_store_prefix="wan",  # api.md: lora_id looks for wan-character-{id}, then character-{id}
    pipelines=(
        PipelineModel(Task.TEXT_TO_VIDEO, "WanPipeline", "wan_pipeline"),
        PipelineModel(Task.REFERENCE_TO_VIDEO, "WanVACEPipeline", "wan_vace_pipeline"),
    ),
    dims=(
        Dim("batch", 1, 1, 2),
        Dim("text_tokens", 1, 512, 512),  # the pipeline pads every prompt to max_sequence_length
        # VACE puts one latent frame per reference image before the clip's.
        Dim("latent_frames", 2, (81 - 1) // 4 + 1, (121 - 1) // 4 + 1 + MAX_REFERENCE_IMAGES),
        LATENT_HEIGHT,
        LATENT_WIDTH,
        Dim.times("latent_height_x2", LATENT_HEIGHT, 2),
        Dim.times("latent_width_x2", LATENT_WIDTH, 2),
        Dim.times("latent_height_x4", LATENT_HEIGHT, 4),
        Dim.times("latent_width_x4", LATENT_WIDTH, 4),
        Dim.times("height", LATENT_HEIGHT, 8),
        Dim.times("width", LATENT_WIDTH, 8),
    ),
    components=(
        Component(
            triton_model="wan_text_encoder",
            role="text_encoder",
            subfolder="text_encoder",
            exporter="umt5_encoder",
            checkpoints=ALL,
            inputs=(
                TensorSpec("input_ids", "INT64", ("batch", "text_tokens")),
                TensorSpec("attention_mask", "INT64", ("batch", "text_tokens")),
            ),
            outputs=(TensorSpec("last_hidden_state", "FP32", ("batch", "text_tokens", -1)),),
        ),
        _transformer("wan_a14b_transformer", "transformer", "wan2.2-t2v-a14b"),
        _transformer("wan_a14b_transformer_2", "transformer_2", "wan2.2-t2v-a14b"),
        _transformer("wan_transformer", "transformer", "wan2.1-t2v-14b", lora=True),  # /wan2.6-lora
        Component(
            triton_model="wan_vae_decoder",
            role="vae",
            subfolder="vae",
            exporter="wan_vae_decoder_first",
            checkpoints=ALL,
            inputs=(TensorSpec("latent", "FP32", ("batch", Z_DIM, 2, "latent_height", "latent_width")),),
            outputs=(TensorSpec("sample", "FP32", ("batch", 3, 5, "height", "width")), *_caches("next_cache_")),
        ),
        Component(
            triton_model="wan_vae_decoder_step",
            role="vae.decoder_step",  # joins the vae proxy (model_repository/proxies.py)
            subfolder="vae",
            exporter="wan_vae_decoder_step",
            checkpoints=ALL,
            inputs=(
                TensorSpec("latent", "FP32", ("batch", Z_DIM, 1, "latent_height", "latent_width")),
                *_caches("cache_"),
            ),
            outputs=(TensorSpec("sample", "FP32", ("batch", 3, 4, "height", "width")), *_caches("next_cache_")),
        ),
        _transformer("wan_vace_transformer", "transformer", VACE, vace=True),  # /wan2.6-r2v
        # VACE encodes its conditioning clip (5 frames, then 4 per step, caches between) and each reference image.
        _encoder("wan_vae_encoder", "vae.encoder", "wan_vae_encoder_first", frames=5, latent_frames=2),
        _encoder("wan_vae_encoder_step", "vae.encoder_step", "wan_vae_encoder_step", frames=4, latent_frames=1),
        Component(
            triton_model="wan_vae_encoder_image",
            role="vae.encoder_image",
            subfolder="vae",
            exporter="wan_vae_encoder_image",
            checkpoints=(VACE,),
            inputs=(TensorSpec("sample", "FP32", ("batch", 3, 1, "height", "width")),),
            outputs=(TensorSpec("moments", "FP32", ("batch", 2 * Z_DIM, 1, "latent_height", "latent_width")),),
        ),
    ),
)

VIDEO_LIMITS = Limits(max_size=1280, max_steps=60)  # api.md's video profile

WAN_T2V = Route(
    path="/wan2.6",
    group="wan",
    checkpoint="wan2.2-t2v-a14b",
    task=Task.TEXT_TO_VIDEO,
    steps=30,
    cfg=5.0,
    width=832,
    height=480,
    num_frames=81,
    fps=16,
    summary="Wan2.2-T2V-A14B: text to video (two experts)",
    limits=VIDEO_LIMITS,
    timeout_s=600.0,  # the product's client waits up to 600 s for Wan
)

DECLARATION = Declaration(
    families=(WAN,),
    checkpoints=(
        Checkpoint(
            key="wan2.2-t2v-a14b",
            hub_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            revision="main",
            family="wan",
            tiny="wan2.2-t2v-a14b",
            guidance=Guidance.TRUE_CFG,
            max_sequence_length=512,
        ),
        Checkpoint(
            key=VACE,
            hub_id="Wan-AI/Wan2.1-VACE-14B-diffusers",
            revision="main",
            family="wan",
            tiny=VACE,
            guidance=Guidance.TRUE_CFG,
            max_sequence_length=512,
        ),
        Checkpoint(
            key="wan2.1-t2v-14b",
            hub_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
            revision="main",
            family="wan",
            tiny="wan2.1-t2v-14b",
            guidance=Guidance.TRUE_CFG,
            max_sequence_length=512,
        ),
    ),
    # VACE in a container of its own: beside the A14B pair and Wan2.1 a fourth 14B transformer would not leave an
    # H100 room for a clip's activations.
    groups=(AppGroup("wan", max_queue=4), AppGroup("wan-r2v", max_queue=4)),
    routes=(
        WAN_T2V,
        replace(
            WAN_T2V,
            path="/wan2.6-lora",
            checkpoint="wan2.1-t2v-14b",
            summary="Wan2.1-T2V-14B + character LoRAs, per request",
            lora=True,
        ),
        replace(
            WAN_T2V,
            path="/wan2.6-r2v",
            group="wan-r2v",
            checkpoint=VACE,
            task=Task.REFERENCE_TO_VIDEO,
            summary="Wan2.1-VACE-14B: the character of reference videos in a new clip",
        ),
    ),
)
