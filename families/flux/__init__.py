"""FLUX.1-schnell (`/flux`) and FLUX.1-dev (`/flux-dev`): CLIP + T5 text encoders, the FLUX transformer and the
16-channel AutoencoderKL, served as five component models behind one FluxPipeline model."""

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
)

# -1 in a shape is a size fixed by the checkpoint's config (hidden widths), not a range to profile.
BOTH = ("flux-dev", "flux-schnell")

# Component.fp8_layers, measured per model (PSNR vs BF16 in perf/results/h100): the large matmuls of the double and
# single blocks (separate or fused QKV, whichever is in use); the adaLN modulation (M = batch), the embedders and
# the final projection stay BF16.
FP8_LAYERS = (
    r"(transformer_blocks|single_transformer_blocks)\.\d+\."
    r"(attn\.(to_q|to_k|to_v|to_qkv|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_added_qkv|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)

FLUX = Family(
    name="flux",
    prompt_tokenizer="tokenizer_2",  # T5's: CLIP truncates at 77 tokens, T5 takes max_sequence_length
    pipelines=(PipelineModel(Task.TEXT_TO_IMAGE, "FluxPipeline", "flux_pipeline"),),
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
            checkpoints=BOTH,
            inputs=(TensorSpec("input_ids", "INT64", ("batch", "clip_tokens")),),
            outputs=(TensorSpec("pooler_output", "FP32", ("batch", -1)),),
        ),
        Component(
            triton_model="flux_text_encoder_2",
            role="text_encoder_2",
            subfolder="text_encoder_2",
            exporter="t5_encoder",
            checkpoints=BOTH,
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
                fp8_layers=FP8_LAYERS,
                accelerations=("fuse_qkv", "compile", "cuda_graphs"),
                lora=variant == "dev",  # /flux-lora
            )
            for variant in ("schnell", "dev")
        ),
        Component(
            triton_model="flux_vae_decoder",
            role="vae",
            subfolder="vae",
            exporter="vae_decoder",
            checkpoints=BOTH,
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

FLUX_DEV = Route(
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
)

DECLARATION = Declaration(
    families=(FLUX,),
    checkpoints=(
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
    ),
    groups=(AppGroup("flux"), AppGroup("lora")),
    routes=(
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
        FLUX_DEV,
        # The base route plus api.md's LoRA fields, in an app group (a container) of its own.
        replace(
            FLUX_DEV, path="/flux-lora", group="lora", summary="FLUX.1-dev + character LoRAs, per request", lora=True
        ),
    ),
)
