"""The one registry: every checkpoint, model family, route and app group of the stack."""

from __future__ import annotations

from .spec import (
    AppGroup,
    Checkpoint,
    Component,
    Dim,
    Family,
    Guidance,
    Lora,
    PipelineModel,
    Route,
    Task,
    TensorSpec,
)

# -1 in a shape is a size fixed by the checkpoint's config (hidden widths), not a range to profile.
_FLUX_BOTH = ("flux-dev", "flux-schnell")

# Component.fp8_layers, measured per model (PSNR vs BF16 in perf/results/h100).
# FLUX: the large matmuls of the double and single blocks (separate or fused QKV, whichever is in use); the adaLN
# modulation (M = batch), the embedders and the final projection stay BF16.
FLUX_FP8_LAYERS = (
    r"(transformer_blocks|single_transformer_blocks)\.\d+\."
    r"(attn\.(to_q|to_k|to_v|to_qkv|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_added_qkv|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)
# Qwen-Image: each block's attention projections of both streams and both MLPs (720 linears at full size).
QWEN_FP8_LAYERS = (
    r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|img_mlp\.net\.(0\.proj|2)|txt_mlp\.net\.(0\.proj|2))"
)

FLUX = Family(
    name="flux",
    pipeline_class="FluxPipeline",
    task=Task.TEXT_TO_IMAGE,
    prompt_tokenizer="tokenizer_2",
    triton_pipeline="flux_pipeline",
    dims=(
        Dim("batch", 1, 1, 4),
        Dim("clip_tokens", 1, 77, 77),
        Dim("t5_tokens", 1, 512, 512),
        Dim("image_tokens", (256 // 16) ** 2, (1024 // 16) ** 2, (2048 // 16) ** 2),
        Dim("latent_height", 256 // 8, 1024 // 8, 2048 // 8),
        Dim("latent_width", 256 // 8, 1024 // 8, 2048 // 8),
        Dim("height", 256, 1024, 2048),
        Dim("width", 256, 1024, 2048),
    ),
    components=(
        Component(
            triton_model="flux_text_encoder",
            role="text_encoder",
            subfolder="text_encoder",
            exporter="clip_text_encoder",
            checkpoints=_FLUX_BOTH,
            inputs=(TensorSpec("input_ids", "INT64", ("batch", "clip_tokens")),),
            outputs=(TensorSpec("pooler_output", "FP32", ("batch", -1)),),
        ),
        Component(
            triton_model="flux_text_encoder_2",
            role="text_encoder_2",
            subfolder="text_encoder_2",
            exporter="t5_encoder",
            checkpoints=_FLUX_BOTH,
            inputs=(TensorSpec("input_ids", "INT64", ("batch", "t5_tokens")),),
            outputs=(TensorSpec("last_hidden_state", "FP32", ("batch", "t5_tokens", -1)),),
        ),
        *(
            Component(
                triton_model=f"flux_{variant}_transformer",
                role="transformer",
                subfolder="transformer",
                exporter="flux_transformer",
                checkpoints=(f"flux-{variant}",),
                inputs=(
                    TensorSpec("hidden_states", "FP32", ("batch", "image_tokens", -1)),
                    TensorSpec("encoder_hidden_states", "FP32", ("batch", "t5_tokens", -1)),
                    TensorSpec("pooled_projections", "FP32", ("batch", -1)),
                    TensorSpec("timestep", "FP32", ("batch",)),
                    TensorSpec("img_ids", "FP32", ("image_tokens", 3)),
                    TensorSpec("txt_ids", "FP32", ("t5_tokens", 3)),
                    *((TensorSpec("guidance", "FP32", ("batch",)),) if variant == "dev" else ()),
                ),
                outputs=(TensorSpec("sample", "FP32", ("batch", "image_tokens", -1)),),
                # Measured on one H100 at 1024² (perf/results/h100): 183 ms/step eager, 132 compiled, 100 with FP8,
                # image PSNR vs eager BF16 39.3 dB either way; CUDA graphs remove the launch time a served step exposes.
                precision="fp8",
                fp8_layers=FLUX_FP8_LAYERS,
                accelerations=("fuse_qkv", "compile", "cuda_graphs"),
            )
            for variant in ("schnell", "dev")
        ),
        Component(
            triton_model="flux_vae_decoder",
            role="vae",
            subfolder="vae",
            exporter="vae_decoder",
            checkpoints=_FLUX_BOTH,
            inputs=(TensorSpec("latent", "FP32", ("batch", -1, "latent_height", "latent_width")),),
            outputs=(TensorSpec("sample", "FP32", ("batch", 3, "height", "width")),),
            # design.md: a FLUX VAE plan over 1344 px failed to build in the anchors; its own, narrower profile.
            profile_dims=(
                Dim("latent_height", 256 // 8, 1024 // 8, 1344 // 8),
                Dim("latent_width", 256 // 8, 1024 // 8, 1344 // 8),
                Dim("height", 256, 1024, 1344),
                Dim("width", 256, 1024, 1344),
            ),
        ),
    ),
)


def _qwen_text_encoder(triton_model: str, checkpoints: tuple[str, ...], vision: bool) -> Component:
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


def _qwen_transformer(triton_model: str, checkpoints: tuple[str, ...], zero_cond_t: bool, **kw: object) -> Component:
    """The rotary tables enter as real cos/sin pairs computed by the pipeline process (components/qwen_rope.py): ONNX
    carries no complex numbers, and image size and text length stay dynamic."""
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
        fp8_layers=QWEN_FP8_LAYERS,
        accelerations=("compile_blocks",),
        **kw,  # type: ignore[arg-type]
    )


def _qwen_vae(prefix: str, checkpoints: tuple[str, ...], encoder: bool) -> tuple[Component, ...]:
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
            role="vae_encoder",
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


_QWEN_T2I = ("qwen-image-2512", "qwen-image-2512-fast")
QWEN_IMAGE = Family(
    name="qwen-image",
    pipeline_class="QwenImagePipeline",
    task=Task.TEXT_TO_IMAGE,
    prompt_tokenizer="tokenizer",
    triton_pipeline="qwen_image_pipeline",
    dims=(
        Dim("batch", 1, 1, 8),
        Dim("prompt_tokens", 1, 128, 34 + 1024),  # the template's 34-token prefix + the prompt
        Dim("text_tokens", 1, 128, 1024),
        *_image_dims(256, 1328, 2048, (2048 // 16) ** 2),
    ),
    components=(
        _qwen_text_encoder("qwen_image_text_encoder", _QWEN_T2I, vision=False),
        _qwen_transformer("qwen_image_transformer", ("qwen-image-2512",), zero_cond_t=False),
        # The same weights with the Lightning 4-step LoRA merged in at build time.
        _qwen_transformer(
            "qwen_image_fast_transformer",
            ("qwen-image-2512-fast",),
            zero_cond_t=False,
            merged_lora="qwen-image-lightning",
        ),
        *_qwen_vae("qwen_image", _QWEN_T2I, encoder=False),
    ),
)

_QWEN_EDIT = ("qwen-image-edit-2511",)
QWEN_EDIT = Family(
    name="qwen-image-edit",
    pipeline_class="QwenImageEditPlusPipeline",
    task=Task.EDIT,
    prompt_tokenizer="tokenizer",
    triton_pipeline="qwen_edit_pipeline",
    more_pipelines=(PipelineModel(Task.INPAINT, "QwenImageEditInpaintPipeline", "qwen_inpaint_pipeline"),),
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
        _qwen_text_encoder("qwen_edit_text_encoder", _QWEN_EDIT, vision=True),
        _qwen_transformer("qwen_edit_transformer", _QWEN_EDIT, zero_cond_t=True),
        *_qwen_vae("qwen_edit", _QWEN_EDIT, encoder=True),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (FLUX, QWEN_IMAGE, QWEN_EDIT)}

# The TensorRT that builds and runs our plans (the one in triton_modal.py's NGC image) and the GPUs we build for
# (H100 = 9.0): plans are named by both, so a plan never loads on a TensorRT or GPU it was not built for.
TENSORRT_VERSION = "10.13.3.9"
GPU_CAPABILITIES = ("9.0",)

# Qwen-Image-Lightning's sampler: exponential time shift fixed at log(3) (its README's scheduler config).
_LIGHTNING_SCHEDULER: tuple[tuple[str, object], ...] = (
    ("base_shift", 1.0986122886681098),  # math.log(3)
    ("max_shift", 1.0986122886681098),
    ("shift", 1.0),
    ("time_shift_type", "exponential"),
    ("use_dynamic_shifting", True),
    ("base_image_seq_len", 256),
    ("max_image_seq_len", 8192),
)

LORAS: dict[str, Lora] = {
    lora.key: lora
    for lora in (
        Lora(
            key="qwen-image-lightning",
            hub_id="lightx2v/Qwen-Image-Lightning",
            weight_name="Qwen-Image-Lightning-4steps-V1.0.safetensors",
            revision="main",
            tiny="qwen-image-lightning",
        ),
    )
}

CHECKPOINTS: dict[str, Checkpoint] = {
    c.key: c
    for c in (
        Checkpoint(
            key="flux-schnell",
            hub_id="black-forest-labs/FLUX.1-schnell",
            revision="main",
            family="flux",
            tiny="flux-schnell",
            guidance=Guidance.NONE_OR_TRUE_CFG,
            max_sequence_length=256,
        ),
        Checkpoint(
            key="flux-dev",
            hub_id="black-forest-labs/FLUX.1-dev",
            revision="main",
            family="flux",
            tiny="flux-dev",
            guidance=Guidance.DISTILLED,
            max_sequence_length=512,
        ),
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
            scheduler_overrides=_LIGHTNING_SCHEDULER,
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
    )
}

GROUPS: dict[str, AppGroup] = {g.name: g for g in (AppGroup("flux"), AppGroup("qwen-image"), AppGroup("qwen-edit"))}

# api.md `aspect_ratio` presets of the Qwen text-to-image routes.
QWEN_ASPECT_RATIOS = (
    ("1:1", 1328, 1328),
    ("16:9", 1664, 928),
    ("9:16", 928, 1664),
    ("4:3", 1472, 1104),
    ("3:4", 1104, 1472),
    ("3:2", 1584, 1056),
    ("2:3", 1056, 1584),
)

ROUTES: dict[str, Route] = {
    r.path: r
    for r in (
        Route(
            path="/flux",
            group="flux",
            checkpoint="flux-schnell",
            task=Task.TEXT_TO_IMAGE,
            steps=4,
            cfg=0.0,
            width=1024,
            height=1024,
            summary="FLUX.1-schnell: fast text to image",
            timeout_s=60.0,
        ),
        Route(
            path="/flux-dev",
            group="flux",
            checkpoint="flux-dev",
            task=Task.TEXT_TO_IMAGE,
            steps=28,
            cfg=3.5,
            width=1024,
            height=1024,
            summary="FLUX.1-dev: quality text to image",
            timeout_s=120.0,
        ),
        Route(
            path="/qwen-image-2512",
            group="qwen-image",
            checkpoint="qwen-image-2512",
            task=Task.TEXT_TO_IMAGE,
            steps=50,
            cfg=4.0,
            width=1328,
            height=1328,
            summary="Qwen-Image-2512: high-quality text to image",
            aspect_ratios=QWEN_ASPECT_RATIOS,
            timeout_s=180.0,
        ),
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
            aspect_ratios=QWEN_ASPECT_RATIOS,
            timeout_s=60.0,
        ),
        Route(
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
        ),
    )
}

# The Triton pipeline model's request and response tensors per task: the contract between api/ and
# model_repository/. Numbers are one-element tensors; text is UTF-8 in a UINT8 tensor (no BYTES tensors: with numpy 2
# in the stub's environment, as on the H100 machine, the python backend can neither read nor write them).
PIPELINE_INPUTS: dict[Task, tuple[TensorSpec, ...]] = {
    Task.TEXT_TO_IMAGE: (
        TensorSpec("CHECKPOINT", "UINT8", (-1,)),
        TensorSpec("PROMPT", "UINT8", (-1,)),
        TensorSpec("NEGATIVE_PROMPT", "UINT8", (-1,)),
        TensorSpec("WIDTH", "INT32", (1,)),
        TensorSpec("HEIGHT", "INT32", (1,)),
        TensorSpec("STEPS", "INT32", (1,)),
        TensorSpec("CFG", "FP32", (1,)),
        TensorSpec("SEED", "INT64", (1,)),
        TensorSpec("NUM_IMAGES", "INT32", (1,)),
    ),
    # Images arrive decoded and checked by api/ (H x W x RGB uint8; masks H x W, 255 = repaint). The output size
    # follows the source image's aspect at the pipeline's working area (~1 MP), as the stock pipelines choose it.
    Task.EDIT: (
        TensorSpec("CHECKPOINT", "UINT8", (-1,)),
        TensorSpec("PROMPT", "UINT8", (-1,)),  # the instruction
        TensorSpec("NEGATIVE_PROMPT", "UINT8", (-1,)),
        TensorSpec("SOURCE_IMAGE", "UINT8", (-1, -1, 3)),
        TensorSpec("REFERENCE_IMAGE_1", "UINT8", (-1, -1, 3), optional=True),
        TensorSpec("REFERENCE_IMAGE_2", "UINT8", (-1, -1, 3), optional=True),
        TensorSpec("STEPS", "INT32", (1,)),
        TensorSpec("CFG", "FP32", (1,)),
        TensorSpec("DENOISE", "FP32", (1,)),
        TensorSpec("SEED", "INT64", (1,)),
        TensorSpec("NUM_IMAGES", "INT32", (1,)),
    ),
    Task.INPAINT: (
        TensorSpec("CHECKPOINT", "UINT8", (-1,)),
        TensorSpec("PROMPT", "UINT8", (-1,)),
        TensorSpec("NEGATIVE_PROMPT", "UINT8", (-1,)),
        TensorSpec("SOURCE_IMAGE", "UINT8", (-1, -1, 3)),
        TensorSpec("MASK_IMAGE", "UINT8", (-1, -1)),
        TensorSpec("STEPS", "INT32", (1,)),
        TensorSpec("CFG", "FP32", (1,)),
        TensorSpec("DENOISE", "FP32", (1,)),
        TensorSpec("SEED", "INT64", (1,)),
        TensorSpec("NUM_IMAGES", "INT32", (1,)),
    ),
}
PIPELINE_OUTPUTS: tuple[TensorSpec, ...] = (
    TensorSpec("IMAGES", "UINT8", (-1, -1, -1, 3)),  # N x H x W x RGB
    # The checkpoint that served it (hub id@revision or local path) as UTF-8 bytes. Numeric, not BYTES, so every
    # output can leave the stub by DLPack: with numpy 2 in the stub's environment (the H100 machine) any numpy
    # output fails ("output tensor shape does not match size of output"), DLPack ones pass.
    TensorSpec("MODEL", "UINT8", (-1,)),
    TensorSpec("PIPELINE_S", "FP32", (1,)),  # seconds spent inside the pipeline model
)


def route(path: str) -> Route:
    return ROUTES[path]


def family_of(checkpoint: str) -> Family:
    return FAMILIES[CHECKPOINTS[checkpoint].family]


def checkpoints_of(family: str) -> list[Checkpoint]:
    return [c for c in CHECKPOINTS.values() if c.family == family]


def routes_of(group: str) -> list[Route]:
    return [r for r in ROUTES.values() if r.group == group]


def component_of(triton_model: str) -> tuple[Family, Component]:
    """The family and component a Triton component model serves."""
    for family in FAMILIES.values():
        for component in family.components:
            if component.triton_model == triton_model:
                return family, component
    raise KeyError(f"no component model {triton_model!r} in the registry")


def pipeline_model_of(path: str) -> str:
    route = ROUTES[path]
    return family_of(route.checkpoint).pipeline_for(route.task).triton_model


def loras_of(family: str) -> list[str]:
    """The registry LoRAs merged into some component of `family` at build time."""
    return sorted({c.merged_lora for c in FAMILIES[family].components if c.merged_lora})
