"""Qwen-Image-2512 (`/qwen-image-2512`, and `/qwen-image-2512-fast` with the Lightning 4-step LoRA merged) and
Qwen-Image-Edit-2511 (`/qwen-image-edit-2511`, `/qwen-image-inpaint-2511`): Qwen2.5-VL as text encoder (in torch on
every profile), the MMDiT transformer with its rotary tables computed by the pipeline process in real arithmetic
(rope.py), and the one-frame causal VAE (decoder; encoder for edits)."""

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
    Lora,
    PipelineModel,
    Route,
    Task,
    TensorSpec,
)

# Component.fp8_layers: each block's attention projections of both streams and both MLPs (720 linears at full
# size).
FP8_LAYERS = (
    r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|img_mlp\.net\.(0\.proj|2)|txt_mlp\.net\.(0\.proj|2))"
)


def _text_encoder(triton_model: str, checkpoints: tuple[str, ...], vision: bool) -> Component:
    """Qwen2.5-VL (7B) runs once per request: in torch inside the python backend on both profiles (no ONNX). Its
    prompt is the pipeline's chat template; for edits it also sees the images (vision tower)."""
    images = (
        (
            TensorSpec("pixel_values", "FP32", ("vision_patches", -1)),
            TensorSpec("image_grid_thw", "INT64", ("vision_images", 3)),
        )
        if vision
        else ()
    )
    return Component(
        triton_model=triton_model,
        role="text_encoder",
        subfolder="text_encoder",
        exporter="qwen2_5_vl_text_encoder",
        checkpoints=checkpoints,
        inputs=(
            TensorSpec("input_ids", "INT64", ("batch", "prompt_tokens")),
            TensorSpec("attention_mask", "INT64", ("batch", "prompt_tokens")),
            *images,
        ),
        outputs=(TensorSpec("last_hidden_state", "FP32", ("batch", "prompt_tokens", -1)),),
        backends=(("cpu", "torch"), ("gpu", "torch")),
    )


def _transformer(triton_model: str, checkpoints: tuple[str, ...], zero_cond_t: bool, **kw: object) -> Component:
    """The rotary tables enter as real cos/sin pairs computed by the pipeline process (rope.py): ONNX carries no
    complex numbers, and image size and text length stay dynamic."""
    return Component(
        triton_model=triton_model,
        role="transformer",
        subfolder="transformer",
        exporter="qwen_transformer",
        checkpoints=checkpoints,
        inputs=(
            TensorSpec("hidden_states", "FP32", ("batch", "image_tokens", -1)),
            TensorSpec("encoder_hidden_states", "FP32", ("batch", "text_tokens", -1)),
            TensorSpec("encoder_hidden_states_mask", "INT64", ("batch", "text_tokens")),
            TensorSpec("timestep", "FP32", ("batch",)),
            # cos/sin of angles up to ~thousands of radians: BF16 would blur the positions.
            TensorSpec("image_rope", "FP32", ("image_tokens", -1, 2), exact=True),
            TensorSpec("text_rope", "FP32", ("text_tokens", -1, 2), exact=True),
            # Edit-2511 modulates the condition images' tokens with timestep 0 (config zero_cond_t).
            *((TensorSpec("modulate_index", "INT64", ("batch", "image_tokens")),) if zero_cond_t else ()),
        ),
        outputs=(TensorSpec("sample", "FP32", ("batch", "image_tokens", -1)),),
        # Measured on one H100 at 1328² (perf/results/h100/qwen_image_*): 349 ms/step eager, 202 with FP8 linears and
        # compiled blocks, image PSNR vs eager BF16 50 dB.
        precision="fp8",
        fp8_layers=FP8_LAYERS,
        accelerations=("compile_blocks",),
        **kw,  # type: ignore[arg-type]
    )


def _vae(prefix: str, checkpoints: tuple[str, ...], encoder: bool) -> tuple[Component, ...]:
    """The Wan-style causal VAE for one frame: latents are (batch, z_dim, 1, h, w). The encoder answers the
    Gaussian's moments so the pipeline samples (or takes the mode) with its own generator, as the stock one does."""
    decoder = Component(
        triton_model=f"{prefix}_vae_decoder",
        role="vae",
        subfolder="vae",
        exporter="qwen_vae_decoder",
        checkpoints=checkpoints,
        inputs=(TensorSpec("latent", "FP32", ("batch", -1, 1, "latent_height", "latent_width")),),
        outputs=(TensorSpec("sample", "FP32", ("batch", 3, 1, "height", "width")),),
    )
    if not encoder:
        return (decoder,)
    return (
        decoder,
        Component(
            triton_model=f"{prefix}_vae_encoder",
            role="vae.encoder",  # joins the vae proxy (model_repository/proxies.py)
            subfolder="vae",
            exporter="qwen_vae_encoder",
            checkpoints=checkpoints,
            inputs=(TensorSpec("sample", "FP32", ("batch", 3, 1, "height", "width")),),
            outputs=(TensorSpec("moments", "FP32", ("batch", -1, 1, "latent_height", "latent_width")),),
        ),
    )


def _image_dims(min_size: int, opt_size: int, max_size: int, image_tokens_max: int) -> tuple[Dim, ...]:
    return (
        Dim("image_tokens", (min_size // 16) ** 2, (opt_size // 16) ** 2, image_tokens_max),
        Dim("latent_height", min_size // 8, opt_size // 8, max_size // 8),
        Dim("latent_width", min_size // 8, opt_size // 8, max_size // 8),
        Dim("height", min_size, opt_size, max_size),
        Dim("width", min_size, opt_size, max_size),
    )


T2I = ("qwen-image-2512", "qwen-image-2512-fast")
QWEN_IMAGE = Family(
    name="qwen-image",
    lora_store_prefix="qwen",
    prompt_tokenizer="tokenizer",
    pipelines=(PipelineModel(Task.TEXT_TO_IMAGE, "QwenImagePipeline", "qwen_image_pipeline"),),
    dims=(
        Dim("batch", 1, 1, 8),
        Dim("prompt_tokens", 1, 128, 34 + 1024),  # the template's 34-token prefix + the prompt
        Dim("text_tokens", 1, 128, 1024),
        *_image_dims(256, 1328, 2048, (2048 // 16) ** 2),
    ),
    components=(
        _text_encoder("qwen_image_text_encoder", T2I, vision=False),
        _transformer("qwen_image_transformer", ("qwen-image-2512",), zero_cond_t=False, lora=True),
        # The same weights with the Lightning 4-step LoRA merged in at build time.
        _transformer(
            "qwen_image_fast_transformer",
            ("qwen-image-2512-fast",),
            zero_cond_t=False,
            merged_lora="qwen-image-lightning",
        ),
        *_vae("qwen_image", T2I, encoder=False),
    ),
)

EDIT = ("qwen-image-edit-2511",)
QWEN_EDIT = Family(
    name="qwen-image-edit",
    lora_store_prefix="qwen",
    prompt_tokenizer="tokenizer",
    pipelines=(
        PipelineModel(Task.EDIT, "QwenImageEditPlusPipeline", "qwen_edit_pipeline"),
        PipelineModel(Task.INPAINT, "QwenImageEditInpaintPipeline", "qwen_inpaint_pipeline"),
    ),
    dims=(
        Dim("batch", 1, 1, 8),
        # template prefix + up to 3 images of ~384² at 28-px patches merged 2x2 (~190 tokens each) + the prompt
        Dim("prompt_tokens", 1, 512, 2048),
        Dim("text_tokens", 1, 512, 2048),
        Dim("vision_patches", 4, 1024, 3 * 4096),
        Dim("vision_images", 1, 1, 3),
        # The output (~1 MP by default) and up to 3 condition images of ~1 MP each, as tokens in one sequence.
        *_image_dims(256, 1024, 2048, 4 * (1024 // 16) ** 2 + (2048 // 16) ** 2),
    ),
    components=(
        _text_encoder("qwen_edit_text_encoder", EDIT, vision=True),
        _transformer("qwen_edit_transformer", EDIT, zero_cond_t=True, lora=True),
        *_vae("qwen_edit", EDIT, encoder=True),
    ),
)

# Qwen-Image-Lightning's sampler: exponential time shift fixed at log(3) (its README's scheduler config).
# Qwen-Image's scheduler stretches its schedule to shift_terminal, which divides by zero at one step.
LIMITS = Limits(min_steps=2)

LIGHTNING_SCHEDULER: tuple[tuple[str, object], ...] = (
    ("base_shift", 1.0986122886681098),  # math.log(3)
    ("max_shift", 1.0986122886681098),
    ("shift", 1.0),
    ("time_shift_type", "exponential"),
    ("use_dynamic_shifting", True),
    ("base_image_seq_len", 256),
    ("max_image_seq_len", 8192),
)

# api.md `aspect_ratio` presets of the text-to-image routes.
ASPECT_RATIOS = (
    ("1:1", 1328, 1328),
    ("16:9", 1664, 928),
    ("9:16", 928, 1664),
    ("4:3", 1472, 1104),
    ("3:4", 1104, 1472),
    ("3:2", 1584, 1056),
    ("2:3", 1056, 1584),
)

QWEN_IMAGE_2512 = Route(
    path="/qwen-image-2512",
    group="qwen-image",
    checkpoint="qwen-image-2512",
    task=Task.TEXT_TO_IMAGE,
    steps=50,
    cfg=4.0,
    width=1328,
    height=1328,
    summary="Qwen-Image-2512: high-quality text to image",
    aspect_ratios=ASPECT_RATIOS,
    timeout_s=180.0,
    limits=LIMITS,
)

QWEN_EDIT_2511 = Route(
    path="/qwen-image-edit-2511",
    group="qwen-edit",
    checkpoint="qwen-image-edit-2511",
    task=Task.EDIT,
    steps=40,
    cfg=4.0,
    width=1024,
    height=1024,
    summary="Qwen-Image-Edit-2511: edit source_image by instruction",
    denoise=0.8,
    timeout_s=180.0,
    limits=LIMITS,
)

DECLARATION = Declaration(
    families=(QWEN_IMAGE, QWEN_EDIT),
    loras=(
        Lora(
            key="qwen-image-lightning",
            family="qwen-image",
            hub_id="lightx2v/Qwen-Image-Lightning",
            weight_name="Qwen-Image-Lightning-4steps-V1.0.safetensors",
            revision="main",
            tiny="qwen-image-lightning",
        ),
    ),
    checkpoints=(
        Checkpoint(
            key="qwen-image-2512",
            hub_id="Qwen/Qwen-Image-2512",
            revision="main",
            family="qwen-image",
            tiny="qwen-image-2512",
            guidance=Guidance.TRUE_CFG,
            max_sequence_length=512,
        ),
        # The same checkpoint folder; its transformer component merges the Lightning LoRA, its sampler is Lightning's.
        Checkpoint(
            key="qwen-image-2512-fast",
            hub_id="Qwen/Qwen-Image-2512",
            revision="main",
            family="qwen-image",
            tiny="qwen-image-2512",
            guidance=Guidance.TRUE_CFG,
            max_sequence_length=512,
            scheduler_overrides=LIGHTNING_SCHEDULER,
        ),
        Checkpoint(
            key="qwen-image-edit-2511",
            hub_id="Qwen/Qwen-Image-Edit-2511",
            revision="main",
            family="qwen-image-edit",
            tiny="qwen-image-edit-2511",
            guidance=Guidance.TRUE_CFG,
            max_sequence_length=512,
        ),
    ),
    groups=(AppGroup("qwen-image"), AppGroup("qwen-edit")),
    routes=(
        QWEN_IMAGE_2512,
        Route(
            path="/qwen-image-2512-fast",
            group="qwen-image",
            checkpoint="qwen-image-2512-fast",
            task=Task.TEXT_TO_IMAGE,
            steps=4,
            cfg=1.0,
            width=1328,
            height=1328,
            summary="Qwen-Image-2512 + Lightning 4-step LoRA (merged): fast text to image",
            aspect_ratios=ASPECT_RATIOS,
            timeout_s=60.0,
            limits=LIMITS,
        ),
        # The base route plus api.md's LoRA fields.
        replace(
            QWEN_IMAGE_2512,
            path="/qwen-image-2512-lora",
            summary="Qwen-Image-2512 + character LoRAs, per request",
            lora=True,
        ),
        QWEN_EDIT_2511,
        # The base route plus api.md's LoRA fields.
        replace(
            QWEN_EDIT_2511,
            path="/qwen-image-edit-lora",
            summary="Qwen-Image-Edit-2511 + character LoRAs: edit source_image by instruction",
            lora=True,
        ),
        Route(
            path="/qwen-image-inpaint-2511",
            group="qwen-edit",
            checkpoint="qwen-image-edit-2511",
            task=Task.INPAINT,
            steps=40,
            cfg=4.0,
            width=1024,
            height=1024,
            summary="Qwen-Image-Edit-2511: repaint the white area of mask_image",
            denoise=1.0,
            timeout_s=180.0,
            limits=LIMITS,
        ),
    ),
)
