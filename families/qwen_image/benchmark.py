"""Qwen-Image-2512 on one GPU, side by side in one run: the plain diffusers QwenImagePipeline in eager BF16 (the
baseline: two transformer passes per step for true CFG) against our serving path in-process: the pipeline's
transformer is our QwenTransformerProxy (CFG as one batch of two, real-arithmetic RoPE tables) calling the module
our torch runtime serves (components.adapters.QwenTransformer), then the same with FP8 linears and compiled blocks.

Full-size Qwen-Image transformer (20B) and VAE with random weights, built on the GPU in BF16 from the real configs.
The Qwen2.5-VL text encoder runs once per request and is left out: prompt embeddings are given (64 and 16 tokens).
Rows: ms per transformer forward (batch 1) at 1328², 50 steps + CFG end to end, and 4 steps without CFG (the fast
route's shape; the merged Lightning LoRA costs nothing per step), MFU, cost, PSNR against eager on the same seed.

    python -m families.qwen_image.benchmark --out perf/results/h100
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from model_repository.accelerate import Acceleration, accelerate, enable_compile_cache
from perf.metrics import cost_usd, mfu, psnr
from perf.report import Row, cuda_ms, log, transformer_flops, write_outputs
from registry import ROUTES, component_of

QWEN_TRANSFORMER = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)
SEED = 42
DEVICE, DTYPE = "cuda", torch.bfloat16  # --smoke: "cpu", float32
TEXT_TOKENS, NEGATIVE_TOKENS = 64, 16


class InProcessClient:
    """Our ComponentClient contract, calling the served module in this process instead of Triton."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.modules = modules

    def infer(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        _, component = component_of(model)
        args = [inputs[s.name] for s in component.inputs if s.name in inputs]
        with torch.inference_mode():
            return {outputs[0]: self.modules[model](*args)}


def build(tiny_dir: Path, smoke: bool):  # noqa: ANN201 - a QwenImagePipeline
    """The full-size random model on the GPU; with `smoke`, the tiny checkpoint's configs on the CPU (a dry run of
    this code, used by the CPU tests)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2Tokenizer

    transformer_config = (
        QwenImageTransformer2DModel.load_config(tiny_dir / "transformer") if smoke else QWEN_TRANSFORMER
    )
    vae_config = AutoencoderKLQwenImage.load_config(tiny_dir / "vae") if smoke else {}
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device(DEVICE):
            torch.manual_seed(0)
            vae = AutoencoderKLQwenImage.from_config(vae_config).eval()
            transformer = QwenImageTransformer2DModel.from_config(transformer_config).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_dir, subfolder="scheduler"),
        vae=vae,
        text_encoder=None,
        tokenizer=Qwen2Tokenizer.from_pretrained(tiny_dir, subfolder="tokenizer"),
        transformer=transformer,
    )


def embeddings(dim: int) -> dict[str, torch.Tensor]:
    """Prompt embeddings as the (left-out) text encoder would give them: 64 prompt and 16 negative tokens."""
    g = torch.Generator(DEVICE).manual_seed(1)
    return {
        "prompt_embeds": torch.randn(1, TEXT_TOKENS, dim, device=DEVICE, dtype=DTYPE, generator=g),
        "prompt_embeds_mask": torch.ones(1, TEXT_TOKENS, device=DEVICE, dtype=torch.int64),
        "negative_prompt_embeds": torch.randn(1, NEGATIVE_TOKENS, dim, device=DEVICE, dtype=DTYPE, generator=g),
        "negative_prompt_embeds_mask": torch.ones(1, NEGATIVE_TOKENS, device=DEVICE, dtype=torch.int64),
    }


def run(pipe, size: int, steps: int, cfg: float) -> np.ndarray:  # noqa: ANN001
    e = embeddings(pipe.transformer.config["joint_attention_dim"])
    if cfg <= 1:
        e = {k: v for k, v in e.items() if not k.startswith("negative")}
    out = pipe(
        width=size,
        height=size,
        num_inference_steps=steps,
        true_cfg_scale=cfg,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
        **e,
    )
    return (out.images[0] * 255).round().astype(np.uint8)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(pipe, size: int, steps: int, cfg: float) -> tuple[float, np.ndarray]:  # noqa: ANN001
    run(pipe, size, 2, cfg)  # warm-up (and compilation) at the same shapes
    _sync()
    t0 = time.perf_counter()
    image = run(pipe, size, steps, cfg)
    _sync()
    return time.perf_counter() - t0, image


def step_ms(fn, repeats: int) -> float:  # noqa: ANN001
    if DEVICE == "cuda":
        return cuda_ms(fn, repeats)
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="eager,ours,ours_fp8_compile")
    parser.add_argument("--size", type=int, default=1328)
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    parser.add_argument("--compile-cache", type=Path, default=Path(tempfile.gettempdir()) / "ryla-inductor")
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU: a dry run of this code")
    parser.add_argument(
        "--negative-tokens", type=int, default=16, help="64 (the prompt's length): our CFG goes as one batch"
    )
    args = parser.parse_args(argv)
    global DEVICE, DTYPE, NEGATIVE_TOKENS
    NEGATIVE_TOKENS = args.negative_tokens
    if args.smoke:
        DEVICE, DTYPE = "cpu", torch.float32
    enable_compile_cache(args.compile_cache)
    from checkpoints.tiny import build_tiny

    from .proxies import QwenTransformerProxy

    device = torch.cuda.get_device_name().replace("NVIDIA ", "") if DEVICE == "cuda" else "cpu smoke"
    quality, fast = ROUTES["/qwen-image-2512"], ROUTES["/qwen-image-2512-fast"]
    log(f"building Qwen-Image (random weights, {DTYPE}) on {device}")
    pipe = build(build_tiny("qwen-image-2512", Path(tempfile.gettempdir()) / "ryla-tiny"), args.smoke)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe.transformer
    tokens = (args.size // 16) ** 2
    g = torch.Generator(DEVICE).manual_seed(0)
    step_inputs = dict(
        hidden_states=torch.randn(1, tokens, 64, device=DEVICE, dtype=DTYPE, generator=g),
        encoder_hidden_states=embeddings(stock.config.joint_attention_dim)["prompt_embeds"],
        encoder_hidden_states_mask=torch.ones(1, TEXT_TOKENS, device=DEVICE, dtype=torch.int64),
        timestep=torch.full((1,), 0.5, device=DEVICE, dtype=DTYPE),
        img_shapes=[[(1, args.size // 16, args.size // 16)]],
        return_dict=False,
    )
    flops = transformer_flops(pipe, step_inputs)  # pipe.transformer is still the stock module here
    log(f"transformer forward: {flops / 1e12:.1f} TFLOP at {args.size}²")

    rows: list[Row] = []
    images: dict[str, np.ndarray] = {}
    config_dir = Path(tempfile.mkdtemp()) / "transformer"
    stock.save_config(config_dir)
    served = None
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        try:
            if variant == "eager":
                step = lambda: stock(**step_inputs)  # noqa: E731
            else:
                if served is None:  # from here on the pipeline runs our serving path
                    from .adapters import QwenTransformer
                    from .rope import QwenRope

                    served = QwenTransformer(stock)  # the module our torch runtime serves (real-arithmetic RoPE)
                    _, component = component_of("qwen_image_transformer")
                    client = InProcessClient({component.triton_model: served})
                    pipe.transformer = QwenTransformerProxy(
                        component, config_dir.parent, client, torch.device(DEVICE), DTYPE
                    )
                    rope = QwenRope.from_config(stock.config)(step_inputs["img_shapes"], TEXT_TOKENS, DEVICE)
                    served_args = [step_inputs[k] for k in ("hidden_states", "encoder_hidden_states")]
                    served_args += [step_inputs["encoder_hidden_states_mask"], step_inputs["timestep"], *rope]
                if variant == "ours_fp8_compile":  # what the registry's GPU profile applies (accelerate.py)
                    _, component = component_of("qwen_image_transformer")
                    how = Acceleration.of(set(component.accelerations), component.precision, component.fp8_layers)
                    accelerate(stock, how, log=log)
                step = functools.partial(served, *served_args)
            with torch.no_grad():
                ms = step_ms(step, 5)
            e2e_s, image = timed(pipe, args.size, quality.steps, quality.cfg)
            fast_s, fast_image = timed(pipe, args.size, fast.steps, fast.cfg)
        except Exception as exc:  # one variant failing must not lose the others' rows
            log(f"{variant} failed: {exc!r}")
            continue
        images[f"qwen-image-2512/{variant}"], images[f"qwen-image-2512-fast/{variant}"] = image, fast_image
        ready_s = time.perf_counter() - t0
        log(f"{variant}: {ms:.1f} ms/step, 50 steps + CFG {e2e_s:.2f}s, 4 steps {fast_s:.2f}s ({ready_s:.0f}s)")
        for model, steps, seconds in (("qwen-image-2512", quality.steps, e2e_s), ("qwen-image-2512-fast", 4, fast_s)):
            row = Row(
                device=device,
                model=model,
                variant=variant,
                width=args.size,
                height=args.size,
                steps=steps,
                step_ms=round(ms, 2),
                end_to_end_s=round(seconds, 3),
                peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if DEVICE == "cuda" else 0.0,
                mfu=round(mfu(flops, ms / 1000), 4),
                cost_usd=round(cost_usd(seconds), 6),
                psnr_vs_eager_db=round(psnr(images[f"{model}/{variant}"], images[f"{model}/eager"]), 2)
                if f"{model}/eager" in images
                else float("nan"),
                compile_s=round(time.perf_counter() - t0, 1),
            )
            log(json.dumps(asdict(row)))
            rows.append(row)
        write_outputs(rows, args.out, name="qwen_image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
