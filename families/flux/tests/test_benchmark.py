"""The FLUX GPU benchmark and FP8 choice, checked on the CPU: the real configs, and the linears that run in FP8."""

from __future__ import annotations

from diffusers import FluxTransformer2DModel

from checkpoints import resolve
from components.fp8 import fp8_layer_names
from families.flux import benchmark
from registry import component_of


def test_fp8_layers_are_the_block_matmuls_in_use(stack_dirs) -> None:
    path = resolve("flux-dev", "tiny", stack_dirs.checkpoints).path / "transformer"
    model = FluxTransformer2DModel.from_pretrained(path)
    pattern = component_of("flux_dev_transformer")[1].fp8_layers
    names = fp8_layer_names(model, pattern)
    assert "transformer_blocks.0.ff.net.2" in names and "single_transformer_blocks.0.proj_out" in names
    assert not any("norm" in n or "embed" in n or n == "proj_out" for n in names)  # sensitive layers stay BF16
    model.fuse_qkv_projections()
    fused = fp8_layer_names(model, pattern)
    assert "transformer_blocks.0.attn.to_qkv" in fused and "transformer_blocks.0.attn.to_q" not in fused


def test_benchmark_knows_the_real_configs() -> None:
    assert benchmark.FLUX_TRANSFORMER["num_layers"] == 19 and benchmark.FLUX_TRANSFORMER["num_single_layers"] == 38
    assert sum(benchmark.FLUX_TRANSFORMER["axes_dims_rope"]) == benchmark.FLUX_TRANSFORMER["attention_head_dim"]
    assert benchmark.MODELS["dev"][0] == 28 and benchmark.MODELS["schnell"][0] == 4
    assert benchmark.VARIANTS["eager"] is None
