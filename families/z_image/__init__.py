"""Z-Image-Turbo (`/z-image-simple`, `/z-image-danrisi`; `/z-image-instantid` and `/z-image-pulid` refused): Qwen3
as text encoder (its second-to-last hidden states), the single-stream DiT with its padding, patching and rotary
tables computed by the pipeline process (adapters.py, proxies.py), and FLUX's VAE (decoder)."""

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
    PipelineModel,
    Route,
    Task,
    TensorSpec,
    UnsupportedRoute,
)

CHECKPOINTS = ("z-image-turbo",)

# Component.fp8_layers: the attention projections and the SwiGLU MLP of every block (refiners and main layers); the
# adaLN modulations (M = 1), the embedders and the final layer stay BF16.
FP8_LAYERS = (
    r"(noise_refiner|context_refiner|layers)\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])"
)

Z_IMAGE = Family(
    name="z-image",
    prompt_tokenizer="tokenizer",
    pipelines=(PipelineModel(Task.TEXT_TO_IMAGE, "ZImagePipeline", "z_image_pipeline"),),
    dims=(
        Dim("batch", 1, 1, 4),
        # The templated prompt's real tokens (proxies.py drops the pipeline's padding to max_sequence_length).
        Dim("prompt_tokens", 1, 128, 512),
        # The prompt's own tokens, padded by the model to a multiple of 32 (its SEQ_MULTI_OF).
        Dim("caption_tokens", 32, 128, 512),
        # (height/16) * (width/16) patches, padded to a multiple of 32.
        Dim("image_tokens", (256 // 16) ** 2, (1024 // 16) ** 2, (2048 // 16) ** 2),
        Dim("latent_height", 256 // 8, 1024 // 8, 2048 // 8),
        Dim("latent_width", 256 // 8, 1024 // 8, 2048 // 8),
        Dim("height", 256, 1024, 2048),
        Dim("width", 256, 1024, 2048),
    ),
    components=(
        Component(
            triton_model="z_image_text_encoder",
            role="text_encoder",
            subfolder="text_encoder",
            exporter="qwen3_text_encoder",
            checkpoints=CHECKPOINTS,
            inputs=(
                TensorSpec("input_ids", "INT64", ("batch", "prompt_tokens")),
                TensorSpec("attention_mask", "INT64", ("batch", "prompt_tokens")),
            ),
            # What the pipeline reads: `hidden_states[-2]`, the states before the last layer.
            outputs=(TensorSpec("penultimate_hidden_state", "FP32", ("batch", "prompt_tokens", -1)),),
        ),
        Component(
            triton_model="z_image_transformer",
            role="transformer",
            subfolder="transformer",
            exporter="z_image_transformer",
            checkpoints=CHECKPOINTS,
            # One item per call (adapters.py says why): batch 1 on every input.
            inputs=(
                TensorSpec("image_tokens", "FP32", (1, "image_tokens", -1)),
                TensorSpec("image_pad", "INT64", (1, "image_tokens")),
                TensorSpec("caption", "FP32", (1, "caption_tokens", -1)),
                TensorSpec("caption_pad", "INT64", (1, "caption_tokens")),
                # The stock model embeds the timestep in FP32: BF16 would move it by up to ~0.4 %.
                TensorSpec("timestep", "FP32", (1,), exact=True),
                # cos/sin of angles up to ~thousands of radians: BF16 would blur the positions.
                TensorSpec("image_rope", "FP32", ("image_tokens", -1, 2), exact=True),
                TensorSpec("caption_rope", "FP32", ("caption_tokens", -1, 2), exact=True),
            ),
            outputs=(TensorSpec("sample", "FP32", (1, "image_tokens", -1)),),
            precision="fp8",
            fp8_layers=FP8_LAYERS,
            accelerations=("compile_blocks",),
            lora=True,  # /z-image-lora
        ),
        Component(
            triton_model="z_image_vae_decoder",
            role="vae",
            subfolder="vae",
            exporter="vae_decoder",
            checkpoints=CHECKPOINTS,
            inputs=(TensorSpec("latent", "FP32", ("batch", -1, "latent_height", "latent_width")),),
            outputs=(TensorSpec("sample", "FP32", ("batch", 3, "height", "width")),),
            # FLUX's VAE: the same narrower profile as in families/flux (design.md: no plan over 1344 px).
            profile_dims=(
                Dim("latent_height", 256 // 8, 1024 // 8, 1344 // 8),
                Dim("latent_width", 256 // 8, 1024 // 8, 1344 // 8),
                Dim("height", 256, 1024, 1344),
                Dim("width", 256, 1024, 1344),
            ),
        ),
    ),
)

# Why the face-identity routes are refused, in the words the product's client already shows.
NO_IDENTITY = (
    "{adapter} is not supported on Z-Image: face adapters (InstantID, PuLID) inject the face through cross-attention, "
    "and Z-Image has none (text and image run as one single-stream sequence). For face identity use /sdxl-instantid "
    "or /flux-pulid."
)

Z_IMAGE_SIMPLE = Route(
    path="/z-image-simple",
    group="z-image",
    checkpoint="z-image-turbo",
    task=Task.TEXT_TO_IMAGE,
    steps=8,
    cfg=0.0,
    width=1024,
    height=1024,
    summary="Z-Image-Turbo: fast text to image (8 steps)",
    timeout_s=60.0,
)

DECLARATION = Declaration(
    families=(Z_IMAGE,),
    checkpoints=(
        Checkpoint(
            key="z-image-turbo",
            hub_id="Tongyi-MAI/Z-Image-Turbo",
            revision="main",
            family="z-image",
            tiny="z-image-turbo",
            guidance=Guidance.NONE_OR_TRUE_CFG,
            # The pipeline pads the templated prompt to this length and truncates past it (pipeline.py checks).
            max_sequence_length=512,
        ),
    ),
    groups=(AppGroup("z-image"),),
    routes=(
        Z_IMAGE_SIMPLE,
        # The product's second Z-Image preset: the same model (one pipeline model serves both), its own defaults.
        Route(
            path="/z-image-danrisi",
            group="z-image",
            checkpoint="z-image-turbo",
            task=Task.TEXT_TO_IMAGE,
            steps=8,
            cfg=0.0,
            width=1024,
            height=1024,
            summary="Z-Image-Turbo, Danrisi preset: the same model as /z-image-simple, its own defaults",
            timeout_s=60.0,
        ),
        # The base route plus api.md's LoRA fields.
        replace(
            Z_IMAGE_SIMPLE, path="/z-image-lora", summary="Z-Image-Turbo + character LoRAs, per request", lora=True
        ),
    ),
    unsupported=(
        UnsupportedRoute(
            path="/z-image-instantid",
            group="z-image",
            summary="Not supported: InstantID on Z-Image (use /sdxl-instantid)",
            message=NO_IDENTITY.format(adapter="InstantID"),
        ),
        UnsupportedRoute(
            path="/z-image-pulid",
            group="z-image",
            summary="Not supported: PuLID on Z-Image (use /flux-pulid)",
            message=NO_IDENTITY.format(adapter="PuLID"),
        ),
    ),
)
