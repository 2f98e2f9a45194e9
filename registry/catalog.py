"""The one registry: every checkpoint, model family, route and app group of the stack."""

from __future__ import annotations

from .spec import AppGroup, Checkpoint, Component, Dim, Family, Guidance, Route, Task, TensorSpec

# -1 in a shape is a size fixed by the checkpoint's config (hidden widths), not a range to profile.
_FLUX_BOTH = ("flux-dev", "flux-schnell")

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
        ),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in (FLUX,)}

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
    )
}

GROUPS: dict[str, AppGroup] = {g.name: g for g in (AppGroup("flux"),)}

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
    return family_of(ROUTES[path].checkpoint).triton_pipeline
