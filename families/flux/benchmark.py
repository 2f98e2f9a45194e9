"""FLUX on one GPU, side by side in one run: the plain diffusers FluxPipeline in eager BF16 (the baseline) against
the same pipeline with its transformer accelerated as our GPU profile serves it (model_repository/accelerate.py).

Full-size FLUX.1 architectures with random weights (no download is possible on the benchmark machine), built
straight on the GPU in BF16 from the real configs, seeded so every variant runs the same weights. For each variant:
ms per transformer step at the given resolution, end-to-end seconds (text encoders + steps + VAE), peak GPU memory,
MFU against the H100's dense BF16 peak (FLOPs from torch.utils.flop_counter), cost per image, and the PSNR of the
image against the eager BF16 image on the same seed. Writes a CSV and a PNG plot.

    python -m families.flux.benchmark --model dev --out perf/results/h100 --variants eager,compile,compile_fp8
    python -m families.flux.benchmark --model dev --variants eager,compile_fp8,cache_dit,cache_dit_dbcache_lossy

`cache_dit` is the peer (perf/peers.py) on a fresh copy of the same weights: FP8 per-row through torchao and its
compile settings, no cache; `cache_dit_dbcache_lossy` adds its DBCache (a different image). Needs the cache-dit and
torchao wheels on the GPU machine. The log ends with the ratio of our fastest variant to each peer row.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from model_repository.accelerate import Acceleration, accelerate, enable_compile_cache
from perf.metrics import cost_usd, mfu, psnr
from perf.peers import CACHE_DIT_VARIANTS, cache_dit_peer, release_cache
from perf.report import Row, cuda_ms, log, transformer_flops, write_outputs
from perf.served import PROMPT, SEED, run_served
from registry import CHECKPOINTS, ROUTES, Guidance, component_of

# The real FLUX.1 configs (diffusers layout); only the weights are random.
FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=(16, 56, 56),
)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
)
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def _facts(model: str) -> tuple[int, bool, int, float]:
    """(steps, guidance embedding, max_sequence_length, guidance_scale) of FLUX.1-`model`, from the registry."""
    route = next(r for r in ROUTES.values() if r.checkpoint == f"flux-{model}")
    checkpoint = CHECKPOINTS[route.checkpoint]
    return route.steps, checkpoint.guidance is Guidance.DISTILLED, checkpoint.max_sequence_length, route.cfg


MODELS = {model: _facts(model) for model in ("dev", "schnell")}
FP8_LAYERS = component_of("flux_dev_transformer")[1].fp8_layers  # the registry's choice, as served
VARIANTS: dict[str, Acceleration | None] = {
    "eager": None,  # plain diffusers, the baseline
    "compile": Acceleration(fuse_qkv=True, compile=True),
    "compile_fp8": Acceleration(fuse_qkv=True, fp8_layers=FP8_LAYERS, compile=True),
    "compile_fp8_cudnn": Acceleration(
        fuse_qkv=True, fp8_layers=FP8_LAYERS, compile=True, attention_backend="_native_cudnn"
    ),
    "compile_fp8_cudagraphs": Acceleration(fuse_qkv=True, fp8_layers=FP8_LAYERS, compile=True, cuda_graphs=True),
}


def fresh_transformer(model: str) -> torch.nn.Module:
    """FLUX.1-`model`'s transformer with its random weights in BF16 on the GPU, the same on every call (one seed)."""
    from diffusers import FluxTransformer2DModel

    _, guidance, _, _ = MODELS[model]
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            torch.manual_seed(1 if model == "dev" else 2)
            return FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=guidance).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def build_pipeline(model: str, tokenizer_dir: Path):  # noqa: ANN201 - a FluxPipeline
    """FLUX.1-`model` with random weights on the GPU in BF16; the tiny checkpoint lends tokenizers and scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            torch.manual_seed(0)
            text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L)).eval()
            text_encoder_2 = T5EncoderModel(T5Config(**T5_XXL)).eval()
            vae = AutoencoderKL(**FLUX_VAE).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    transformer = fresh_transformer(model)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tokenizer_dir, subfolder="scheduler")
    return FluxPipeline(
        scheduler=scheduler,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir, subfolder="tokenizer"),
        text_encoder_2=text_encoder_2,
        tokenizer_2=T5Tokenizer.from_pretrained(tokenizer_dir, subfolder="tokenizer_2"),
        vae=vae,
        transformer=transformer,
    )


def transformer_inputs(pipe, model: str, width: int, height: int) -> dict:  # noqa: ANN001
    _, guidance, seq, scale = MODELS[model]
    tokens = (width // 16) * (height // 16)
    g = torch.Generator("cuda").manual_seed(0)
    kwargs = dict(
        hidden_states=torch.randn(1, tokens, 64, device="cuda", dtype=torch.bfloat16, generator=g),
        encoder_hidden_states=torch.randn(1, seq, 4096, device="cuda", dtype=torch.bfloat16, generator=g),
        pooled_projections=torch.randn(1, 768, device="cuda", dtype=torch.bfloat16, generator=g),
        timestep=torch.full((1,), 0.5, device="cuda", dtype=torch.bfloat16),
        img_ids=pipe._prepare_latent_image_ids(1, height // 16, width // 16, "cuda", torch.bfloat16),
        txt_ids=torch.zeros(seq, 3, device="cuda", dtype=torch.bfloat16),
        guidance=torch.full((1,), scale, device="cuda", dtype=torch.float32) if guidance else None,
        return_dict=False,
    )
    return kwargs


def end_to_end(pipe, model: str, width: int, height: int, repeats: int) -> tuple[float, np.ndarray]:  # noqa: ANN001
    steps, _, seq, scale = MODELS[model]

    def run() -> np.ndarray:
        out = pipe(
            PROMPT,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=scale,
            max_sequence_length=seq,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
        )
        return (out.images[0] * 255).round().astype(np.uint8)

    image = run()  # warm-up (and compilation for compiled variants)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        image = run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), image


def bench_model(model: str, args: argparse.Namespace, device: str, rows: list[Row]) -> None:
    """Every variant of one model on the same weights, appended to `rows` (and written out) as each finishes."""
    from checkpoints.tiny import build_tiny

    steps = MODELS[model][0]
    log(f"building FLUX.1-{model} (random weights, BF16) on {device}")
    pipe = build_pipeline(model, build_tiny(f"flux-{model}", Path(tempfile.gettempdir()) / "ryla-tiny"))
    pipe.set_progress_bar_config(disable=True)
    checkpoint_dir = args.work / f"flux-{model}"
    if args.served:
        # The same random weights as a real diffusers checkpoint folder, for Triton's models to load.
        t0 = time.perf_counter()
        pipe.save_pretrained(checkpoint_dir)
        log(f"saved the checkpoint to {checkpoint_dir} in {time.perf_counter() - t0:.0f}s")
    inputs = transformer_inputs(pipe, model, args.width, args.height)
    flops = transformer_flops(pipe, inputs)
    log(f"transformer forward: {flops / 1e12:.1f} TFLOP at {args.width}x{args.height}")

    def step() -> object:
        return pipe.transformer(**inputs)

    eager_image = None
    peer_before = False  # the transformer in the pipeline is a peer's
    for variant in args.variants.split(","):
        peer = variant in CACHE_DIT_VARIANTS
        how = None if peer else VARIANTS[variant]
        t0 = time.perf_counter()
        if peer or peer_before:
            torch._dynamo.reset()
            pipe.transformer = None
            gc.collect()
            torch.cuda.empty_cache()
            pipe.transformer = fresh_transformer(model)
        if peer:
            cache_dit_peer(pipe, pipe.transformer, cache=CACHE_DIT_VARIANTS[variant], log=log)
        elif how is not None:
            pipe.transformer.__dict__.pop("forward", None)  # back to the uncompiled forward
            torch._dynamo.reset()
            accelerate(pipe.transformer, how, log=log)
        peer_before = peer
        torch.cuda.reset_peak_memory_stats()
        if peer and CACHE_DIT_VARIANTS[variant]:
            step_ms = float("nan")  # a cached step costs what the cache decides; its hooks live in a pipeline call
        else:
            with torch.no_grad():
                step_ms = cuda_ms(step, args.step_repeats)
        compile_s = time.perf_counter() - t0 if peer or (how is not None and how.compile) else 0.0
        log(f"{model}/{variant}: {step_ms:.1f} ms per step (ready after {compile_s:.0f}s incl. compile)")
        e2e_s, image = end_to_end(pipe, model, args.width, args.height, args.e2e_repeats)
        if variant == "eager":
            eager_image = image
        row = Row(
            device=device,
            model=f"flux-{model}",
            variant=variant,
            width=args.width,
            height=args.height,
            steps=steps,
            step_ms=round(step_ms, 2),
            end_to_end_s=round(e2e_s, 3),
            peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
            mfu=round(mfu(flops, step_ms / 1000), 4),
            cost_usd=round(cost_usd(e2e_s), 6),
            psnr_vs_eager_db=round(psnr(image, eager_image), 2) if eager_image is not None else float("nan"),
            compile_s=round(compile_s, 1),
        )
        log(json.dumps(asdict(row)))
        rows.append(row)
        write_outputs(rows, args.out, "flux")
        if peer and CACHE_DIT_VARIANTS[variant]:
            release_cache(pipe)
    log_peer_ratios([r for r in rows if r.model == f"flux-{model}"])
    if not args.served:
        return
    pipe = inputs = None  # free the in-process pipeline: the served one needs the GPU
    gc.collect()
    torch.cuda.empty_cache()

    route = next(r for r in ROUTES.values() if r.checkpoint == f"flux-{model}")
    served = run_served(
        route.path,
        checkpoint_dir,
        args.work / f"served-{model}",
        args.width,
        args.height,
        args.e2e_repeats,
        log,
        restart=not args.no_restart,
    )
    row = served.row(device, f"flux-{model}", args.width, args.height, steps, eager_image)
    log(json.dumps(asdict(row)))
    rows.append(row)
    write_outputs(rows, args.out, "flux")


def log_peer_ratios(rows: list[Row]) -> None:
    """Our fastest variant's end to end over each peer row's (below 1: ours is faster)."""
    ours = [r for r in rows if r.variant != "eager" and r.variant not in CACHE_DIT_VARIANTS]
    if not ours:
        return
    best = min(ours, key=lambda r: r.end_to_end_s)
    for peer in (r for r in rows if r.variant in CACHE_DIT_VARIANTS):
        log(
            f"ours ({best.variant}) / {peer.variant}: {best.end_to_end_s / peer.end_to_end_s:.2f} "
            f"({best.end_to_end_s:.3f} s vs {peer.end_to_end_s:.3f} s; PSNR vs eager {best.psnr_vs_eager_db} vs "
            f"{peer.psnr_vs_eager_db} dB)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="default: dev")
    parser.add_argument("--variants", default="eager,compile,compile_fp8")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--e2e-repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    parser.add_argument("--served", action="store_true", help="also time our GPU profile served by a real Triton")
    parser.add_argument("--no-restart", action="store_true", help="served: skip the warm-restart timing")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ryla-bench")
    parser.add_argument("--compile-cache", type=Path, default=Path(tempfile.gettempdir()) / "ryla-inductor")
    args = parser.parse_args(argv)
    enable_compile_cache(args.compile_cache)
    torch.backends.cuda.matmul.allow_tf32 = True

    device = torch.cuda.get_device_name().replace("NVIDIA ", "")
    rows: list[Row] = []
    for model in args.model or ["dev"]:
        bench_model(model, args, device, rows)
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
