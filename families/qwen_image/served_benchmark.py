"""Qwen-Image served by our GPU-profile Triton repository, side by side with the plain diffusers pipeline on the
same weights: the same request (prompt, seed, size, steps, true CFG against an empty negative prompt), its time end
to end and per step, and how far the served image is from the plain one (PSNR).

The checkpoint is a diffusers folder with random weights at full width: Qwen-Image's transformer (3072 wide, 24
heads) with `--layers` of its 60 blocks, its VAE whole, and Qwen2.5-VL-7B with `--text-layers` of its 28 decoder
layers; the tiny checkpoint lends tokenizer and scheduler. Fewer blocks because the benchmark machine's 64 GB disk
cannot hold the 41 GB transformer beside the 16 GB text encoder and their copies in memory; the time per transformer
block scales the step time to the whole model (the `scaled_to_60_layers` rows, an estimate).

    python -m families.qwen_image.served_benchmark --out perf/results/h100  # GPU: ~15 min, ~5 of them compiling
    python -m families.qwen_image.served_benchmark --smoke  # CPU: checkpoint assembly and the plain side only
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from perf.metrics import cost_usd, psnr
from perf.report import Row, log, write_outputs
from perf.served import PROMPT, SEED, run_served
from registry import CHECKPOINTS, ROUTES

ROUTE = "/qwen-image-2512"
FULL_LAYERS = 60


def build_checkpoint(out: Path, layers: int, text_layers: int, smoke: bool) -> Path:
    """The tiny checkpoint's folder with transformer, VAE and text encoder replaced by full-width random modules."""
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel

    from checkpoints.tiny import build_tiny

    from .benchmark import QWEN_TRANSFORMER
    from .text_encoder_benchmark import build as build_text_encoder

    tiny = build_tiny(ROUTES[ROUTE].checkpoint, Path(tempfile.gettempdir()) / "ryla-tiny")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tiny, out)
    if smoke:  # the tiny modules as they are: this run checks the code path, not the sizes
        return out
    device, dtype = "cuda", torch.bfloat16
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            for name, module in (
                (
                    "transformer",
                    lambda: QwenImageTransformer2DModel.from_config({**QWEN_TRANSFORMER, "num_layers": layers}),
                ),
                ("vae", lambda: AutoencoderKLQwenImage.from_config({})),
            ):
                t0 = time.perf_counter()
                model = module().eval()
                shutil.rmtree(out / name)
                model.save_pretrained(out / name)
                size = sum(p.numel() for p in model.parameters()) * 2 / 2**30
                log(f"{name}: {size:.1f} GB saved in {time.perf_counter() - t0:.0f}s")
                del model
    finally:
        torch.set_default_dtype(torch.float32)
    t0 = time.perf_counter()
    encoder = build_text_encoder(tiny, device, dtype, smoke=False, text_layers=text_layers)
    shutil.rmtree(out / "text_encoder")
    encoder.save_pretrained(out / "text_encoder")
    log(f"text_encoder ({text_layers} layers): saved in {time.perf_counter() - t0:.0f}s")
    del encoder
    gc.collect()
    torch.cuda.empty_cache()
    return out


def plain_pipeline(checkpoint: Path, device: str, dtype: torch.dtype):  # noqa: ANN201 - a QwenImagePipeline
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(checkpoint, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_plain(pipe, size: int, steps: int) -> tuple[float, np.ndarray]:  # noqa: ANN001
    """The request as the served pipeline model makes it (model_repository/pipelines.py): true CFG against "",
    a CPU generator seeded with the request's seed, images rounded as diffusers' numpy_to_pil."""
    route = ROUTES[ROUTE]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = pipe(
        prompt=PROMPT,
        negative_prompt="",
        true_cfg_scale=route.cfg,
        num_inference_steps=steps,
        width=size,
        height=size,
        max_sequence_length=CHECKPOINTS[route.checkpoint].max_sequence_length,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    )
    sync()
    seconds = time.perf_counter() - t0
    return seconds, (np.asarray(out.images[0], dtype=np.float32) * 255).round().astype(np.uint8)


def per_step_s(at: dict[int, float]) -> float:
    """Seconds per denoising step from end-to-end times at two step counts (fixed costs cancel)."""
    (n0, t0), (n1, t1) = sorted(at.items())[:2]
    return (t1 - t0) / (n1 - n0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=20, help=f"transformer blocks of {FULL_LAYERS}")
    parser.add_argument("--text-layers", type=int, default=4, help="Qwen2.5-VL decoder layers of 28")
    parser.add_argument("--size", type=int, default=1328)
    parser.add_argument("--steps", type=int, default=ROUTES[ROUTE].steps)
    parser.add_argument("--short-steps", type=int, default=10, help="second step count, for the time per step")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--restart", action="store_true", help="also time a warm restart (compile caches on disk)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ryla-qwen-served")
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    parser.add_argument("--smoke", action="store_true", help="tiny modules on the CPU, plain side only")
    args = parser.parse_args(argv)
    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    name = "cpu smoke" if args.smoke else torch.cuda.get_device_name().replace("NVIDIA ", "")
    checkpoint = build_checkpoint(args.work / "checkpoint", args.layers, args.text_layers, args.smoke)
    steps = (args.short_steps, args.steps)

    rows: list[Row] = []

    def row(variant: str, step_s: float, e2e_s: float, quality_db: float, **extra: float) -> Row:
        r = Row(
            device=name,
            model=f"qwen-image-2512 ({args.layers} of {FULL_LAYERS} blocks)",
            variant=variant,
            width=args.size,
            height=args.size,
            steps=args.steps,
            step_ms=round(step_s * 1000, 1),
            end_to_end_s=round(e2e_s, 3),
            peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else 0.0,
            mfu=float("nan"),
            cost_usd=round(cost_usd(e2e_s), 6),
            psnr_vs_eager_db=round(quality_db, 2),
            compile_s=float("nan"),
            **extra,
        )
        log(json.dumps(asdict(r)))
        rows.append(r)
        return r

    # Plain diffusers first, then free the GPU for Triton's processes.
    pipe = plain_pipeline(checkpoint, device, dtype)
    run_plain(pipe, args.size, 2)  # warm-up: cuDNN/cuBLAS choices, allocator
    plain = {n: run_plain(pipe, args.size, n) for n in steps}
    plain_image = plain[args.steps][1]
    plain_step = per_step_s({n: t for n, (t, _) in plain.items()})
    row("eager", plain_step, plain[args.steps][0], float("nan"))
    pipe = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if args.smoke:
        write_outputs(rows, args.out, name="qwen_served")
        return 0

    served = run_served(
        ROUTE,
        checkpoint,
        args.work / "served",
        args.size,
        args.size,
        args.repeats,
        log,
        others={"short": {"steps": args.short_steps}},
        restart=args.restart,
    )
    served_step = per_step_s({args.short_steps: served.seconds_at["short"], args.steps: served.end_to_end_s})
    quality = psnr(served.image, plain_image)
    row(
        "served_triton",
        served_step,
        served.end_to_end_s,
        quality,
        ready_s=round(served.ready_s, 1),
        first_image_s=round(served.first_image_s, 1),
        warm_ready_s=round(served.warm_ready_s, 1),
        warm_first_image_s=round(served.warm_first_image_s, 1),
    )
    # The whole model's estimate: the step scales with the blocks; what is not a step (text encoder, VAE) does not.
    scale = FULL_LAYERS / args.layers
    for variant, step_s, e2e_s in (
        ("eager", plain_step, plain[args.steps][0]),
        ("served_triton", served_step, served.end_to_end_s),
    ):
        fixed = e2e_s - args.steps * step_s
        row(f"{variant}_scaled_to_60_layers", step_s * scale, fixed + args.steps * step_s * scale, float("nan"))
    write_outputs(rows, args.out, name="qwen_served")
    log(f"served vs plain: {plain[args.steps][0] / served.end_to_end_s:.2f}x end to end, PSNR {quality:.1f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
