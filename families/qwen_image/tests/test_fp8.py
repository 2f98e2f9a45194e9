"""The Lightning transformer's FP8 Q/DQ graph (export/fp8_qdq.py): calibrated through QwenImagePipeline with the
LoRA merged and Lightning's sampler, the last block's dead text-stream linears skipped, the graph runs in ONNX
Runtime close to the FP32 export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from checkpoints import resolve, resolve_lora
from components.adapters import adapter_of
from export import fp8_qdq as fq
from export import tensorrt_build as tb
from families.qwen_image.adapters import qwen_shape
from registry import FAMILIES


def test_qwen_fast_transformer_with_its_merged_lora(model_repository: Path, stack_dirs, tmp_path: Path) -> None:
    """Qwen-Image's Lightning transformer: calibrated through QwenImagePipeline with the LoRA merged and Lightning's
    sampler; its last block's text-stream linears are dead code in the export and skipped; the graph runs."""

    family = FAMILIES["qwen-image"]
    fast = next(c for c in family.components if c.triton_model == "qwen_image_fast_transformer")
    checkpoint = resolve("qwen-image-2512-fast", "tiny", stack_dirs.checkpoints).path
    lora = resolve_lora("qwen-image-lightning", "tiny", stack_dirs.checkpoints).file
    path, entry, _ = fq.build_qdq_onnx(
        fast,
        family,
        stack_dirs.onnx,
        {"qwen-image-2512-fast": checkpoint},
        qdq_dir=tmp_path,
        loras={"qwen-image-lightning": lora},
        calibration=fq.Calibration(prompts=("a fox",), steps=2, width=64, height=64),
    )
    last = len(entry["activation_amax"]) // 12 - 1  # 12 selected linears per block
    assert entry["absent"] == [
        f"transformer_blocks.{last}.{n}" for n in ("attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2")
    ]
    assert tb.quantize_nodes(path) == {"fp8": 4 * entry["layers"], "other": 0} and entry["layers"] == 12 * last + 9
    adapter = adapter_of(family.name, fast.exporter)
    module = adapter.load(checkpoint / "transformer")
    torch.manual_seed(0)
    inputs = adapter.example(module, qwen_shape(batch=1, height=64, width=64, text_tokens=8))
    feeds = {s.name: t.numpy() for s, t in zip(fast.inputs, inputs, strict=True)}
    quantized = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    fp32_path = stack_dirs.onnx / fast.triton_model / "model.onnx"
    fp32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.isfinite(quantized).all() and 0 < np.abs(quantized - fp32).max() < 0.1 * np.abs(fp32).max()
