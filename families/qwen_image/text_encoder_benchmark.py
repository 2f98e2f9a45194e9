"""The Qwen2.5-VL text encoder of Qwen-Image, timed as the pipelines call it once per request (it runs in torch in
the python backend on every profile: registry `qwen2_5_vl_text_encoder`, no ONNX/TensorRT export).

Full-size Qwen2.5-VL-7B (text 28 layers x 3584, vision tower 32 blocks) with random weights on the GPU in BF16,
driven through the stock pipelines' own `encode_prompt`: text to image (chat template + prompt) and an edit (template,
one 384² condition image through the vision tower, instruction), each for prompts at and with CFG's negative.

    python -m families.qwen_image.text_encoder_benchmark --out perf/results/h100
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perf.report import log

# The released Qwen2.5-VL-7B-Instruct sizes; token ids (image pad etc.) stay the tiny tokenizer's.
TEXT = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
)
VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    fullatt_block_indexes=[7, 15, 23, 31],
)
PROMPT = (
    "a lighthouse on a cliff at dawn, waves breaking on black rocks, warm light in the windows, gulls in the sky, "
    "cinematic wide shot, 35 mm film, soft morning haze"
)


def build(
    tiny_dir: Path, device: str, dtype: torch.dtype, smoke: bool, text_layers: int | None = None
) -> torch.nn.Module:
    """Qwen2.5-VL-7B's sizes (or, with `smoke`, the tiny checkpoint's) with random weights; `text_layers` keeps
    that many of the 28 decoder layers (a benchmark whose disk cannot hold the whole model)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig.from_pretrained(tiny_dir / "text_encoder")
    if not smoke:
        layers = text_layers or TEXT["num_hidden_layers"]
        for key, value in {**TEXT, "num_hidden_layers": layers}.items():
            setattr(config.text_config, key, value)
        config.text_config.layer_types = ["full_attention"] * layers
        config.text_config.rope_parameters["mrope_section"] = [16, 24, 24]  # head dim 128
        for key, value in VISION.items():
            setattr(config.vision_config, key, value)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            return Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(torch.float32)


def timed_ms(fn, device: str, repeats: int = 5) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/local"))
    parser.add_argument("--smoke", action="store_true", help="the tiny config on the CPU: a dry run of this code")
    args = parser.parse_args(argv)
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImagePipeline
    from transformers import Qwen2Tokenizer, Qwen2VLProcessor

    from checkpoints.tiny import build_tiny
    from model_repository.processors import load_processor

    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.bfloat16)
    name = "cpu smoke" if args.smoke else torch.cuda.get_device_name().replace("NVIDIA ", "")
    root = Path(tempfile.gettempdir()) / "ryla-tiny"
    edit_dir = build_tiny("qwen-image-edit-2511", root)
    log(f"building Qwen2.5-VL ({'tiny' if args.smoke else '7B'}, random weights) on {name}")
    encoder = build(edit_dir, device, dtype, args.smoke)
    shared = dict(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(edit_dir, subfolder="scheduler"),
        vae=None,
        text_encoder=encoder,
        tokenizer=Qwen2Tokenizer.from_pretrained(edit_dir, subfolder="tokenizer"),
        transformer=None,
    )
    t2i = QwenImagePipeline(**shared)
    edit = QwenImageEditPlusPipeline(**shared, processor=load_processor(Qwen2VLProcessor, edit_dir, "processor"))
    rng = np.random.default_rng(0)
    condition = Image.fromarray(rng.integers(0, 255, (384, 384, 3), dtype=np.uint8))
    cases = {
        "text_to_image": lambda: t2i.encode_prompt(prompt=PROMPT, device=torch.device(device)),
        "edit_one_image": lambda: edit.encode_prompt(prompt=PROMPT, image=[condition], device=torch.device(device)),
    }
    rows = []
    with torch.inference_mode():
        for case, fn in cases.items():
            embeds, _ = fn()
            ms = timed_ms(fn, device)
            rows.append({"device": name, "case": case, "text_tokens": embeds.shape[1], "ms": round(ms, 2)})
            log(f"{case}: {ms:.1f} ms ({embeds.shape[1]} prompt tokens after the template)")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"qwen_text_encoder_{name.replace(' ', '_')}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
