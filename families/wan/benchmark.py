"""Wan text-to-video on one GPU (issue 16): the plain diffusers WanPipeline in eager BF16 (the baseline) against the
same pipeline with its transformer accelerated the way our GPU profile does it (model_repository/accelerate.py: FP8
row-wise linears for the blocks' attention and FFN matmuls, each of the 40 blocks compiled).

Full-size architectures with random weights (no download is possible on the benchmark machine), built straight on
the GPU in BF16 from the real configs: Wan2.1-T2V-14B's transformer, the UMT5-XXL encoder and the Wan2.1 VAE; the
tokenizer is a tiny sentencepiece one trained offline (prompts are padded to 512 tokens, so its size costs nothing).
Wan2.2-T2V-A14B is two such 14B experts switched at a boundary timestep: a step costs one expert's forward, so the
14B is measured once (`--a14b` also runs the two-expert layout end to end when the budget leaves room).

For each variant, at 832x480 and 81 frames: ms per transformer forward (a CFG step is two), end-to-end seconds for
`--steps` steps with CFG (UMT5 encoding + 2 forwards a step + VAE decode) and for a `--distilled-steps` distilled run
(a random rank-64 LoRA merged into the block linears, as a LightX2V-style distill LoRA is merged at build time: the
same cost; no CFG, guidance 1), peak GPU memory, MFU, and the PSNR of the first frames against eager on the same seed.
`--budget-s` cuts the run short: an end-to-end run that would not fit is extrapolated from the measured parts and
labelled so (`..._extrapolated`). Eager and ours may run in two processes: the first writes its rows and reference
frames (`--save-reference`), the second reads them (`--rows-in`, `--reference`) and writes the combined CSV and plot.

    python -m families.wan.benchmark --out $OUT --steps 30 --distilled-steps 4 --variants eager --save-reference \
        --a14b --budget-s 510
    python -m families.wan.benchmark --out $OUT --steps 30 --distilled-steps 4 --variants registry --a14b \
        --rows-in .whl/wan_eager_H200.csv --reference .whl/wan_eager_reference.npz --budget-s 530
    python -m families.wan.benchmark --out $OUT --steps 30 --distilled-steps 4   # both in one process (~11 min)
    python -m families.wan.benchmark --out $OUT --layout a14b --blocks 8 --served --no-restart   # and /wan2.6 served

`--served` saves the same random weights as a checkpoint and then serves `/wan2.6` from it through our GPU profile in
a real tritonserver: 30 steps + CFG, and the distilled step count without CFG. The full A14B checkpoint (two 14B
experts and UMT5-XXL, 69 GB) does not fit the benchmark machine's 64 GB disk, so `--blocks` keeps the width and cuts
the depth; each row is then also written extrapolated to the full 40 blocks (`full_depth`: the missing blocks' share
of the measured forwards added back).
    python -m families.wan.benchmark --tiny --out /tmp/wan-tiny   # the code path on the CPU, tiny widths
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.wan import Z_DIM, tiny
from model_repository.accelerate import Acceleration, accelerate, enable_compile_cache
from perf.metrics import cost_usd, mfu, psnr
from perf.report import Row, log, write_outputs
from perf.served import PROMPT, SEED
from registry import component_of

# transformer/config.json of Wan-AI/Wan2.1-T2V-14B-Diffusers (each expert of Wan2.2-T2V-A14B has the same);
# only the weights are random.
WAN_14B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# text_encoder/config.json: google/umt5-xxl's encoder.
UMT5_XXL: dict[str, Any] = dict(
    vocab_size=256384,
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
# vae/config.json: the Wan2.1 VAE (also in Wan2.2-T2V-A14B).
WAN_VAE: dict[str, Any] = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)
WIDTH, HEIGHT, FRAMES = 832, 480, 81  # the /wan2.6 route's defaults (480p)
CFG_SCALE = 5.0
TEXT_TOKENS = tiny.MAX_SEQUENCE_LENGTH  # every prompt is padded to 512
VAE_SPATIAL, VAE_TEMPORAL = 8, 4
REFERENCE_FRAMES = 4  # PSNR over the first frames of the clip
LORA_RANK, LORA_SEED = 64, 7

_SERVED = component_of("wan_transformer")[1]  # the registry's choice for the Wan transformers
FP8_LAYERS = _SERVED.fp8_layers

VARIANTS: dict[str, Acceleration | None] = {
    "eager": None,  # plain diffusers, the baseline
    # What our GPU profile's torch component model does (as for Z-Image / Qwen-Image: FP8 + compiled blocks).
    "registry": Acceleration.of(set(_SERVED.accelerations), _SERVED.precision, _SERVED.fp8_layers),
}


@dataclasses.dataclass(frozen=True)
class Shape:
    width: int
    height: int
    frames: int

    @property
    def latent(self) -> tuple[int, int, int, int]:
        return (
            Z_DIM,
            (self.frames - 1) // VAE_TEMPORAL + 1,
            self.height // VAE_SPATIAL,
            self.width // VAE_SPATIAL,
        )


def rope_axes(attention_head_dim: int) -> tuple[int, int, int]:
    """(frames, height, width) split of a head's rotary dims, as diffusers' WanRotaryPosEmbed makes it."""
    h = w = 2 * (attention_head_dim // 6)
    return attention_head_dim - h - w, h, w


def transformer_tokens(config: dict[str, Any], shape: Shape) -> int:
    _, f, h, w = shape.latent
    pt, ph, pw = config["patch_size"]
    return (f // pt) * (h // ph) * (w // pw)


def forward_flops(
    config: dict[str, Any], shape: Shape, text_tokens: int = TEXT_TOKENS, attention: bool = True
) -> float:
    """Matmul and attention FLOPs of one transformer forward (batch 1): per block, self-attention's 4 projections
    and its L x L attention, cross-attention's q/out over the video tokens, k/v over the text and its L x T
    attention, the FFN; around the blocks the patch embedding, the text and time embedders and the output head.
    Elementwise work is left out (it is not tensor-core work); `attention=False` leaves out the two attention
    products too (what torch's FLOP counter sees of SDPA on a CPU: nothing)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, n = config["ffn_dim"], config["num_layers"]
    tokens = transformer_tokens(config, shape)
    patch = config["patch_size"][0] * config["patch_size"][1] * config["patch_size"][2]
    per_block = (
        2 * tokens * d * d * 4  # attn1 to_q, to_k, to_v, to_out
        + 2 * text_tokens * d * d * 2  # attn2 to_k, to_v over the text
        + 2 * tokens * d * d * 2  # attn2 to_q, to_out
        + 2 * tokens * d * f * 2  # ffn up and down
    )
    if attention:
        per_block += 4 * tokens * tokens * d + 4 * tokens * text_tokens * d  # QK^T and PV, self and cross
    around = (
        2 * tokens * d * patch * (config["in_channels"] + config["out_channels"])  # patch embedding, output head
        + 2 * text_tokens * (config["text_dim"] * d + d * d)  # text embedder
        + 2 * (config["freq_dim"] * d + d * d + d * 6 * d)  # time embedder and its projection
    )
    return float(n * per_block + around)


@contextlib.contextmanager
def _bf16_on(device: str) -> Iterator[None]:
    """Build modules straight on `device` in BF16 (no FP32 copy, no meta-device init)."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(dtype)


def fresh_transformer(config: dict[str, Any], device: str, seed: int = 1) -> torch.nn.Module:
    """The random-weight transformer, the same weights on every call (one seed): each variant starts from it, as an
    FP8 swap cannot be undone in place."""
    from diffusers import WanTransformer3DModel

    with _bf16_on(device):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**config).eval()


def build_pipeline(
    config: dict[str, Any], tiny_mode: bool, device: str, work: Path, with_transformer: bool = True, a14b: bool = False
) -> Any:  # a WanPipeline
    """Wan2.1-T2V-14B (or, `a14b`, Wan2.2-T2V-A14B's two experts) with random weights in BF16 (tiny widths with
    `tiny_mode`), tokenizer trained offline; without `with_transformer` the caller sets the transformers (an
    accelerated variant need not build the eager ones first)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    tok = tiny.tokenizer(work / "tokenizer")
    with _bf16_on(device):
        torch.manual_seed(0)
        if tiny_mode:
            text_encoder = tiny.text_encoder(tok)
            vae = tiny.vae()
        else:
            config = UMT5Config(
                **UMT5_XXL, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0
            )
            text_encoder = UMT5EncoderModel(config).eval()
            vae = AutoencoderKLWan(**WAN_VAE).eval()
    experts = fresh_experts(config, device, a14b) if with_transformer else (None, None)
    return WanPipeline(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(**tiny.SCHEDULER),
        transformer=experts[0],
        transformer_2=experts[1],
        boundary_ratio=tiny.BOUNDARY_RATIO if a14b else None,
    )


def fresh_experts(config: dict[str, Any], device: str, a14b: bool) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The transformer, and with `a14b` the low-noise expert beside it (other weights: seed 2)."""
    return fresh_transformer(config, device), fresh_transformer(config, device, seed=2) if a14b else None


def transformer_config(tiny_mode: bool, blocks: int | None = None) -> dict[str, Any]:
    """The real config (tiny widths with `tiny_mode`); `blocks` keeps the width and cuts the depth, for a machine
    whose disk cannot hold the checkpoint's copies (the time of the missing blocks is then added back by arithmetic:
    `full_depth`)."""
    config = tiny._transformer_kwargs() if tiny_mode else dict(WAN_14B_TRANSFORMER)
    return config | ({"num_layers": blocks} if blocks else {})


def full_depth(row: Row, forwards: int, forward_ms: float, blocks: int, full_blocks: int) -> Row:
    """`row`, measured with `blocks` of the `full_blocks` blocks, with the missing blocks' time added: each of the
    clip's `forwards` transformer forwards costs `forward_ms` for `blocks` blocks (the embeddings and the head
    around them are a fraction of a percent of a forward, counted as block time: an overestimate)."""
    extra_s = forwards * forward_ms / 1000 * (full_blocks / blocks - 1)
    e2e_s = row.end_to_end_s + extra_s
    return dataclasses.replace(
        row,
        variant=f"{row.variant}_{full_blocks}blocks_extrapolated",
        step_ms=round(row.step_ms * full_blocks / blocks, 1) if row.step_ms == row.step_ms else row.step_ms,
        end_to_end_s=round(e2e_s, 2),
        cost_usd=round(cost_usd(e2e_s), 5),
    )


def transformer_inputs(config: dict[str, Any], shape: Shape, device: str) -> dict[str, Any]:
    g = torch.Generator(device).manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, *shape.latent, device=device, dtype=torch.bfloat16, generator=g),
        timestep=torch.full((1,), 500.0, device=device),
        encoder_hidden_states=torch.randn(
            1, TEXT_TOKENS, config["text_dim"], device=device, dtype=torch.bfloat16, generator=g
        ),
        return_dict=False,
    )


def timed_ms(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median milliseconds of `fn` (CUDA events on a GPU, wall clock on the CPU), after an optional warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generate(pipe: Any, shape: Shape, steps: int, guidance: float) -> tuple[float, np.ndarray]:
    """One clip end to end: (seconds, its first frames as uint8)."""
    _sync()
    t0 = time.perf_counter()
    out = pipe(
        PROMPT,
        width=shape.width,
        height=shape.height,
        num_frames=shape.frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        max_sequence_length=TEXT_TOKENS,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
    )
    _sync()
    seconds = time.perf_counter() - t0
    frames = np.asarray(out.frames[0][:REFERENCE_FRAMES])
    return seconds, (np.nan_to_num(frames) * 255).round().clip(0, 255).astype(np.uint8)


def lora_targets(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    import re

    regex = re.compile(FP8_LAYERS)
    return [(n, m) for n, m in module.named_modules() if regex.fullmatch(n)]


def lora_delta(name: str, out_features: int, in_features: int, device: str) -> torch.Tensor:
    """A random rank-64 LoRA's merged update B @ A * (alpha / rank) for one linear, the same on every call."""
    g = torch.Generator(device).manual_seed(LORA_SEED + sum(map(ord, name)))
    a = torch.randn(LORA_RANK, in_features, device=device, generator=g) / in_features**0.5
    b = torch.randn(out_features, LORA_RANK, device=device, generator=g) * 0.01
    return b @ a


def merge_lora(module: torch.nn.Module, device: str) -> Callable[[], None]:
    """Merge a random distill LoRA into the block linears in place (BF16 weights, or FP8 ones re-quantised from their
    dequantised weights plus the update, in place so compiled code stays valid); returns the undo."""
    from components.fp8 import Fp8Linear

    saved: list[tuple[torch.nn.Module, tuple[torch.Tensor, ...]]] = []
    with torch.no_grad():
        for name, linear in lora_targets(module):
            if isinstance(linear, Fp8Linear):
                saved.append((linear, (linear.weight_fp8.clone(), linear.weight_scale.clone())))
                weight = linear.weight_fp8.float() * linear.weight_scale.t()
                linear.set_rows(slice(None), weight + lora_delta(name, *weight.shape, device))
            else:
                saved.append((linear, (linear.weight.detach().clone(),)))
                linear.weight.add_(lora_delta(name, *linear.weight.shape, device).to(linear.weight.dtype))

    def undo() -> None:
        with torch.no_grad():
            for linear, tensors in saved:
                if isinstance(linear, Fp8Linear):
                    linear.weight_fp8.copy_(tensors[0])
                    linear.weight_scale.copy_(tensors[1])
                else:
                    linear.weight.copy_(tensors[0])
        saved.clear()

    return undo


def read_rows(path: Path) -> list[Row]:
    types = {f.name: f.type for f in dataclasses.fields(Row)}
    cast = {"str": str, "int": int, "float": float}
    with path.open() as f:
        return [Row(**{k: cast[str(types[k])](v) for k, v in r.items()}) for r in csv.DictReader(f)]


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0 = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def fits(self, estimate_s: float) -> bool:
        return estimate_s < self.left()


def save_checkpoint(pipe: Any, config: dict[str, Any], device: str, a14b: bool, folder: Path) -> None:
    """The pipeline's random weights as a checkpoint folder in the diffusers layout, for Triton to load (the same
    seeds make the same weights, so a folder saved before is kept)."""
    if (folder / "model_index.json").is_file():
        log(f"checkpoint {folder} already saved")
        return
    built = pipe.transformer is None
    if built:
        pipe.transformer, pipe.transformer_2 = fresh_experts(config, device, a14b)
    t0 = time.perf_counter()
    pipe.save_pretrained(folder)
    log(f"saved the checkpoint to {folder} in {time.perf_counter() - t0:.0f}s")
    if built:
        pipe.transformer = pipe.transformer_2 = None
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="eager,registry")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--distilled-steps", type=int, default=4)
    parser.add_argument("--forward-repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="wall-clock budget of this process")
    parser.add_argument(
        "--layout", choices=("14b", "a14b"), default="14b", help="Wan2.1-T2V-14B, or Wan2.2-T2V-A14B's two experts"
    )
    parser.add_argument("--a14b", action="store_true", help="14b layout: also run the A14B layout if it fits")
    parser.add_argument(
        "--blocks", type=int, help="blocks per transformer (40): fewer at full width, then extrapolated"
    )
    parser.add_argument("--served", action="store_true", help="a14b layout: then /wan2.6 through a real Triton")
    parser.add_argument("--no-restart", action="store_true", help="served: skip the warm-restart timing")
    parser.add_argument("--tiny", action="store_true", help="tiny widths, 128x128, 5 frames: the code path on a CPU")
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    parser.add_argument("--rows-in", type=Path, help="rows of an earlier run (its eager baseline) to write alongside")
    parser.add_argument("--reference", type=Path, help="eager's first frames from an earlier run, for PSNR")
    parser.add_argument("--save-reference", action="store_true", help="write eager's first frames to --out")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ryla-wan-bench")
    parser.add_argument("--compile-cache", type=Path, default=Path(tempfile.gettempdir()) / "ryla-inductor")
    args = parser.parse_args(argv)
    if args.served and args.layout != "a14b":
        parser.error("--served serves /wan2.6, Wan2.2-T2V-A14B: give --layout a14b")
    budget = Budget(args.budget_s)
    enable_compile_cache(args.compile_cache)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name().replace("NVIDIA ", "") if device == "cuda" else "cpu"
    shape = Shape(128, 128, 5) if args.tiny else Shape(WIDTH, HEIGHT, FRAMES)
    config = transformer_config(args.tiny, args.blocks)
    full_blocks = transformer_config(args.tiny)["num_layers"]
    a14b = args.layout == "a14b"
    model = ("wan2.2-t2v-a14b" if a14b else "wan2.1-t2v-14b") + ("-tiny" if args.tiny else "")
    if config["num_layers"] != full_blocks:
        model += f"-{config['num_layers']}of{full_blocks}blocks"

    t0 = time.perf_counter()
    log(f"building {model} (random weights, BF16) on {device_name}: UMT5-XXL, 14B transformer(s), Wan2.1 VAE")
    variants = args.variants.split(",")
    pipe = build_pipeline(config, args.tiny, device, args.work, with_transformer=variants[0] == "eager", a14b=a14b)
    pipe.set_progress_bar_config(disable=True)
    params = sum(p.numel() for p in (pipe.transformer or fresh_transformer(config, "meta")).parameters()) / 1e9
    log(f"built in {time.perf_counter() - t0:.0f}s: transformer {params:.2f}B parameters")
    checkpoint_dir = args.work / model
    if args.served:
        save_checkpoint(pipe, config, device, a14b, checkpoint_dir)
    inputs = transformer_inputs(config, shape, device)
    flops = forward_flops(config, shape)
    log(
        f"{shape.width}x{shape.height}, {shape.frames} frames: latent {shape.latent}, "
        f"{transformer_tokens(config, shape)} video + {TEXT_TOKENS} text tokens, {flops / 1e12:.0f} TFLOP a forward"
    )

    rows: list[Row] = read_rows(args.rows_in) if args.rows_in else []
    reference: dict[str, np.ndarray] = dict(np.load(args.reference)) if args.reference else {}
    saved: dict[str, np.ndarray] = {}
    measured: list[tuple[Row, int, float]] = []  # (row, its transformer forwards, ms per forward): for full_depth
    forward_of: dict[str, float] = {}

    def write(row: Row, forwards: int, forward_ms: float) -> None:
        log(json.dumps(asdict(row)))
        rows.append(row)
        measured.append((row, forwards, forward_ms))
        write_outputs(rows, args.out, "wan")

    def add(variant: str, steps: int, forwards: int, e2e_s: float, frames: np.ndarray | None, key: str) -> None:
        ref, forward_ms = reference.get(key), forward_of[variant]
        row = Row(
            device=device_name,
            model=model,
            variant=f"{variant}_{key}",
            width=shape.width,
            height=shape.height,
            steps=steps,
            step_ms=round(forward_ms, 1),
            end_to_end_s=round(e2e_s, 2),
            peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else float("nan"),
            mfu=round(mfu(flops, forward_ms / 1000), 4),
            cost_usd=round(cost_usd(e2e_s), 5),
            psnr_vs_eager_db=round(psnr(frames, ref), 2) if frames is not None and ref is not None else float("nan"),
            compile_s=round(compile_s, 1),
        )
        write(row, forwards, forward_ms)

    for variant in variants:
        how = VARIANTS[variant]
        t0 = time.perf_counter()
        if how is not None:
            torch._dynamo.reset()
            pipe.transformer = pipe.transformer_2 = None
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
            if device == "cpu":  # FP8 GEMMs and inductor's GPU kernels need the GPU: only the compile path here
                how = dataclasses.replace(how, fp8_layers=None)
            first, second = fresh_experts(config, device, a14b)
            pipe.transformer = accelerate(first, how, log=log)
            pipe.transformer_2 = accelerate(second, how, log=log) if second is not None else None
        experts = [t for t in (pipe.transformer, pipe.transformer_2) if t is not None]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        # 1. One transformer forward (the warm-up call compiles the blocks for ours, of each expert).
        with torch.no_grad():
            out = pipe.transformer(**inputs)[0]
            for expert in experts[1:]:
                expert(**inputs)
            compile_s = time.perf_counter() - t0 if how is not None else 0.0
            log(f"{variant}: first forward done {time.perf_counter() - t0:.0f}s after the build")
            forward_ms = timed_ms(lambda: pipe.transformer(**inputs), args.forward_repeats, warmup=False)
        forward_of[variant] = forward_ms
        if variant == "eager":
            saved["forward"] = out.float().cpu().numpy()
        elif "forward" in reference:
            ref = torch.from_numpy(reference["forward"])
            err = ((out.float().cpu() - ref).norm() / ref.norm()).item()
            log(f"{variant}: transformer output vs eager, relative L2 error {err:.4f}")
        del out
        log(
            f"{variant}: {forward_ms:.0f} ms per forward ({2 * forward_ms / 1000:.2f} s per CFG step), "
            f"MFU {mfu(flops, forward_ms / 1000):.1%}; {budget.left():.0f}s of the budget left"
        )

        # 2. The distilled run: a random LoRA merged in, 4 steps, no CFG (also warms the text encoder and VAE).
        t1 = time.perf_counter()
        undos = [merge_lora(expert, device) for expert in experts]
        _sync()
        log(f"{variant}: random rank-{LORA_RANK} LoRA merged into the block linears in {time.perf_counter() - t1:.1f}s")
        distilled_s, frames = generate(pipe, shape, args.distilled_steps, 1.0)
        for undo in undos:
            undo()
        saved["distilled"] = frames
        log(f"{variant}: {args.distilled_steps}-step distilled clip end to end {distilled_s:.1f}s")
        add(variant, args.distilled_steps, args.distilled_steps, distilled_s, frames, "distilled")

        # 3. The parts around the steps, for the log (and an extrapolation if the real run does not fit).
        with torch.no_grad():
            encode_ms = timed_ms(lambda: pipe.encode_prompt(PROMPT, do_classifier_free_guidance=True), 1, False)
            noise = torch.randn(1, *shape.latent, device=device, dtype=torch.bfloat16)
            decode_ms = timed_ms(partial(pipe.vae.decode, noise, return_dict=False), 1, False)
            del noise
        log(
            f"{variant}: UMT5 prompt + negative {encode_ms:.0f} ms, "
            f"VAE decode of {shape.frames} frames {decode_ms:.0f} ms"
        )

        # 4. The full run: `--steps` steps with CFG, real if it fits in the budget, else extrapolated.
        estimate_s = (encode_ms + 2 * args.steps * forward_ms + decode_ms) / 1000
        if budget.fits(estimate_s * 1.05 + 10):
            log(f"{variant}: {args.steps} steps + CFG end to end, about {estimate_s:.0f}s")
            e2e_s, frames = generate(pipe, shape, args.steps, CFG_SCALE)
            saved["cfg"] = frames
            log(f"{variant}: {args.steps}-step CFG clip end to end {e2e_s:.1f}s (estimate was {estimate_s:.0f}s)")
            add(variant, args.steps, 2 * args.steps, e2e_s, frames, "cfg")
        else:
            log(f"{variant}: {estimate_s:.0f}s would not fit in {budget.left():.0f}s left: extrapolated")
            add(variant, args.steps, 2 * args.steps, estimate_s, None, "cfg_extrapolated")

        if variant == "eager" and args.save_reference:
            args.out.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(args.out / "wan_eager_reference.npz", **saved)
            log(f"wrote {args.out / 'wan_eager_reference.npz'} ({', '.join(saved)})")

        # 5. With the 14b layout, Wan2.2-T2V-A14B too: a second expert beside the first, switched at the boundary.
        if args.a14b and not a14b:
            a14b_estimate = estimate_s + 60
            if budget.fits(a14b_estimate):
                from diffusers import WanPipeline

                t1 = time.perf_counter()
                expert_2 = fresh_transformer(config, device, seed=2)
                if how is not None:
                    expert_2 = accelerate(expert_2, how, log=log)
                parts = {**pipe.components, "transformer_2": expert_2}
                two = WanPipeline(**{**parts, "boundary_ratio": tiny.BOUNDARY_RATIO})
                two.set_progress_bar_config(disable=True)
                log(f"{variant}: A14B second expert ready in {time.perf_counter() - t1:.0f}s")
                e2e_s, _ = generate(two, shape, args.steps, CFG_SCALE)
                log(f"{variant}: A14B {args.steps}-step CFG clip end to end {e2e_s:.1f}s")
                add(variant, args.steps, 2 * args.steps, e2e_s, None, "a14b_cfg")
                del two, expert_2
            else:
                log(f"{variant}: A14B layout skipped ({a14b_estimate:.0f}s would not fit in {budget.left():.0f}s)")

        if variant == "eager" and not reference:
            reference = dict(saved)

    if args.served:
        # The same weights served: the checkpoint saved above, through our GPU profile in a real Triton (the served
        # distilled run has no LoRA merged: a merged LoRA costs nothing per step, as timed in process above).
        from perf.served import run_served

        pipe = inputs = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        served = run_served(
            "/wan2.6",
            checkpoint_dir,
            args.work / "served",
            shape.width,
            shape.height,
            1,
            log,
            others={"distilled": {"steps": args.distilled_steps, "cfg": 1.0}},
            restart=not args.no_restart,
        )
        served.image = served.image[:REFERENCE_FRAMES]
        # ms per forward as ours runs it in process (the served path times whole clips only)
        ours_ms = forward_of.get("registry", float("nan"))
        row = dataclasses.replace(
            served.row(device_name, model, shape.width, shape.height, args.steps, reference.get("cfg")),
            variant="served_triton_cfg",
        )
        write(row, 2 * args.steps, ours_ms)
        distilled_s = served.seconds_at["distilled"]
        row = dataclasses.replace(
            row,
            variant="served_triton_distilled_no_lora",
            steps=args.distilled_steps,
            end_to_end_s=round(distilled_s, 2),
            cost_usd=round(cost_usd(distilled_s), 5),
            psnr_vs_eager_db=float("nan"),
        )
        write(row, args.distilled_steps, ours_ms)

    if config["num_layers"] != full_blocks:
        for row, forwards, forward_ms in list(measured):
            if forward_ms == forward_ms:
                extrapolated = full_depth(row, forwards, forward_ms, config["num_layers"], full_blocks)
                log(json.dumps(asdict(extrapolated)))
                rows.append(extrapolated)
        write_outputs(rows, args.out, "wan")
    log(f"done, {budget.left():.0f}s of the budget left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
