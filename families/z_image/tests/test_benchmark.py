"""The Z-Image GPU benchmark and FP8 choice, checked on the CPU: the real configs agree with each other, and the
registry's FP8 linears are the blocks' attention and MLP matmuls, no modulation, embedder or final layer."""

from __future__ import annotations

import torch
from diffusers import ZImageTransformer2DModel

from components.fp8 import fp8_layer_names
from families.z_image import benchmark
from registry import component_of


def test_fp8_layers_are_the_block_matmuls() -> None:
    with torch.device("meta"):  # the real architecture, without its 6B weights
        model = ZImageTransformer2DModel(**benchmark.Z_IMAGE_TRANSFORMER)
    names = fp8_layer_names(model, component_of("z_image_transformer")[1].fp8_layers)
    for block in ("noise_refiner.0", "context_refiner.0", "layers.0", "layers.1"):
        assert f"{block}.attention.to_q" in names and f"{block}.feed_forward.w2" in names
    assert len(names) == (30 + 2 + 2) * 7  # q, k, v, out and the SwiGLU's three, in every block
    assert not any("adaLN" in n or "embedder" in n or "final_layer" in n for n in names)


def test_benchmark_knows_the_real_configs() -> None:
    t, text = benchmark.Z_IMAGE_TRANSFORMER, benchmark.QWEN3_4B
    assert t["dim"] // t["n_heads"] == sum(t["axes_dims"]) == 128
    assert t["cap_feat_dim"] == text["hidden_size"]  # captions are the text encoder's states
    assert t["n_layers"] == 30 and text["num_hidden_layers"] == 36
    assert benchmark.VARIANTS["eager"] is None and benchmark.VARIANTS["registry"].fp8
