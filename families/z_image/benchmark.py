"""Z-Image-Turbo on one GPU, side by side in one run: the plain diffusers ZImagePipeline in eager BF16 (the
baseline), the same pipeline with its transformer accelerated as the registry says (FP8 linears, compiled blocks;
model_repository/accelerate.py), and our GPU profile served by a real tritonserver (`--served`).

Full-size Z-Image-Turbo architectures with random weights (no download is possible on the benchmark machine): the
Qwen3-4B text encoder, the 6B single-stream DiT and FLUX's VAE, built straight on the GPU in BF16 from the real
configs, seeded so every variant runs the same weights. For each variant: ms per transformer step, end-to-end
seconds (text encoder + 8 steps + VAE), peak GPU memory, MFU, cost per image and the PSNR of the image against the
eager BF16 image on the same seed. Writes a CSV and a PNG plot.

    python -m families.z_image.benchmark --out perf/results/h200 --served
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from families.flux.benchmark import FLUX_VAE
from model_repository.accelerate import Acceleration, accelerate, enable_compile_cache
from perf.metrics import cost_usd, mfu, psnr
from perf.report import Row, cuda_ms, log, transformer_flops, write_outputs
from perf.served import PROMPT, SEED, run_served
from registry import ROUTES, component_of

ROUTE = "/z-image-simple"

# transformer/config.json of Tongyi-MAI/Z-Image-Turbo; only the weights are random.
Z_IMAGE_TRANSFORMER = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=2560,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
# text_encoder/config.json: Qwen3-4B.
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    hidden_act="silu",
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    tie_word_embeddings=True,
)


def _registry_acceleration() -> Acceleration:
    """What the GPU profile's torch component model applies to the transformer (registry)."""
    component = component_of("z_image_transformer")[1]
    return Acceleration.of(set(component.accelerations), component.precision, component.fp8_layers)


VARIANTS: dict[str, Acceleration | None] = {
    "eager": None,
    "registry": _registry_acceleration(),
    "bf16_compile_blocks": Acceleration(fuse_qkv=False, compile=False, compile_blocks=True),
}


def build_pipeline(tiny_dir: Path):  # noqa: ANN201 - a ZImagePipeline
    """Z-Image-Turbo with random weights on the GPU in BF16; the tiny checkpoint lends tokenizer and scheduler."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            torch.manual_seed(0)
            text_encoder = Qwen3Model(Qwen3Config(**QWEN3_4B)).eval()
            vae = AutoencoderKL(**FLUX_VAE).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_dir, subfolder="scheduler"),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(tiny_dir, subfolder="tokenizer"),
        transformer=fresh_transformer(),
    )


def fresh_transformer():  # noqa: ANN201 - a ZImageTransformer2DModel
    """The random-weight transformer, the same weights on every call (one seed): each variant starts from it, as
    an FP8 swap cannot be undone in place."""
    from diffusers import ZImageTransformer2DModel

    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            torch.manual_seed(1)
            return ZImageTransformer2DModel(**Z_IMAGE_TRANSFORMER).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def transformer_inputs(pipe, width: int, height: int, caption_tokens: int) -> dict:  # noqa: ANN001
    g = torch.Generator("cuda").manual_seed(0)
    latent = torch.randn(16, 1, height // 8, width // 8, device="cuda", dtype=torch.bfloat16, generator=g)
    caption = torch.randn(caption_tokens, 2560, device="cuda", dtype=torch.bfloat16, generator=g)
    return dict(x=[latent], t=torch.full((1,), 0.5, device="cuda"), cap_feats=[caption], return_dict=False)


def end_to_end(pipe, width: int, height: int, steps: int, repeats: int) -> tuple[float, np.ndarray]:  # noqa: ANN001
    def run() -> np.ndarray:
        out = pipe(
            PROMPT,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=0.0,
            max_sequence_length=512,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="np",
        )
        return (np.nan_to_num(out.images[0]) * 255).round().astype(np.uint8)

    image = run()  # warm-up (and compilation for compiled variants)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        image = run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), image


def prompt_tokens(pipe) -> int:  # noqa: ANN001
    """The benchmark prompt's caption length as the pipeline feeds the transformer (chat template included)."""
    from families.z_image.pipeline import templated_tokens

    return templated_tokens(pipe.tokenizer, PROMPT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="eager,registry")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--step-repeats", type=int, default=10)
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    parser.add_argument("--served", action="store_true", help="also time our GPU profile served by a real Triton")
    parser.add_argument("--save", action="store_true", help="save the checkpoint folder for a later --served run")
    parser.add_argument("--no-restart", action="store_true", help="served: skip the warm-restart timing")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ryla-bench")
    parser.add_argument("--compile-cache", type=Path, default=Path(tempfile.gettempdir()) / "ryla-inductor")
    args = parser.parse_args(argv)
    enable_compile_cache(args.compile_cache)
    torch.backends.cuda.matmul.allow_tf32 = True
    from checkpoints.tiny import build_tiny

    device = torch.cuda.get_device_name().replace("NVIDIA ", "")
    steps = ROUTES[ROUTE].steps
    log(f"building Z-Image-Turbo (random weights, BF16) on {device}")
    pipe = build_pipeline(build_tiny("z-image-turbo", Path(tempfile.gettempdir()) / "ryla-tiny"))
    pipe.set_progress_bar_config(disable=True)
    checkpoint_dir = args.work / "z-image-turbo"
    if args.save or args.served:
        if (checkpoint_dir / "model_index.json").is_file():  # the same seeds made the same weights before
            log(f"checkpoint {checkpoint_dir} already saved")
        else:
            t0 = time.perf_counter()
            pipe.save_pretrained(checkpoint_dir)  # the same random weights as a checkpoint folder, for Triton
            log(f"saved the checkpoint to {checkpoint_dir} in {time.perf_counter() - t0:.0f}s")
    caption = prompt_tokens(pipe)
    inputs = transformer_inputs(pipe, args.width, args.height, caption)
    flops = transformer_flops(pipe, inputs)
    log(f"transformer forward: {flops / 1e12:.1f} TFLOP at {args.width}x{args.height}, caption {caption} tokens")

    def step() -> object:
        return pipe.transformer(**inputs)

    with torch.no_grad():
        encode_ms = cuda_ms(lambda: pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False), args.step_repeats)
        latent = torch.randn(1, 16, args.height // 8, args.width // 8, device="cuda", dtype=torch.bfloat16)
        decode_ms = cuda_ms(lambda: pipe.vae.decode(latent, return_dict=False), args.step_repeats)
    log(f"eager BF16, once per image: text encoder {encode_ms:.1f} ms (512 tokens), VAE decode {decode_ms:.1f} ms")

    rows: list[Row] = []
    eager_image = None
    for variant in args.variants.split(","):
        how = VARIANTS[variant]
        t0 = time.perf_counter()
        if how is not None:
            torch._dynamo.reset()
            pipe.transformer = None
            gc.collect()
            torch.cuda.empty_cache()
            pipe.transformer = accelerate(fresh_transformer(), how, log=log)
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            step_ms = cuda_ms(step, args.step_repeats)
        compile_s = time.perf_counter() - t0 if how is not None and (how.compile or how.compile_blocks) else 0.0
        log(f"{variant}: {step_ms:.1f} ms per step (ready after {compile_s:.0f}s incl. compile)")
        e2e_s, image = end_to_end(pipe, args.width, args.height, steps, args.e2e_repeats)
        if variant == "eager":
            eager_image = image
        row = Row(
            device=device,
            model="z-image-turbo",
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
        write_outputs(rows, args.out, "z_image")
    if not args.served:
        return 0
    pipe = inputs = None  # free the in-process pipeline: the served one needs the GPU
    gc.collect()
    torch.cuda.empty_cache()
    served = run_served(
        ROUTE,
        checkpoint_dir,
        args.work / "served",
        args.width,
        args.height,
        args.e2e_repeats,
        log,
        restart=not args.no_restart,
    )
    row = served.row(device, "z-image-turbo", args.width, args.height, steps, eager_image)
    log(json.dumps(asdict(row)))
    rows.append(row)
    write_outputs(rows, args.out, "z_image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
