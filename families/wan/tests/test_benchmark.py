"""The Wan GPU benchmark, checked on the CPU: the real configs agree with each other, the FP8 regex selects exactly
the blocks' attention and FFN matmuls of the full 14B architecture (built on the meta device, no weights), and the
FLOP formula matches torch's FLOP counter on the tiny transformer, a run with fewer blocks is extrapolated to the
full depth by its forwards' time."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

from components.fp8 import fp8_layer_names
from families.wan import Z_DIM, benchmark, tiny


def test_benchmark_knows_the_real_configs() -> None:
    t, text, vae = benchmark.WAN_14B_TRANSFORMER, benchmark.UMT5_XXL, benchmark.WAN_VAE
    assert t["num_attention_heads"] * t["attention_head_dim"] == 5120
    assert t["text_dim"] == text["d_model"] == 4096  # the transformer reads UMT5's states
    assert text["num_heads"] * text["d_kv"] == text["d_model"]
    frames, height, width = benchmark.rope_axes(t["attention_head_dim"])
    assert (frames, height, width) == (44, 42, 42) and frames + height + width == 128
    assert all(axis % 2 == 0 for axis in (frames, height, width))  # rotary pairs
    assert vae["z_dim"] == t["in_channels"] == t["out_channels"] == Z_DIM
    shape = benchmark.Shape(benchmark.WIDTH, benchmark.HEIGHT, benchmark.FRAMES)
    assert shape.latent == (16, 21, 60, 104)
    assert benchmark.transformer_tokens(t, shape) == 21 * 30 * 52
    assert benchmark.VARIANTS["eager"] is None
    ours = benchmark.VARIANTS["registry"]
    assert ours is not None and ours.fp8 and ours.compile_blocks and not ours.compile


def test_fp8_layers_are_the_block_matmuls() -> None:
    with torch.device("meta"):  # the real architecture, without its 14B weights
        model = WanTransformer3DModel(**benchmark.WAN_14B_TRANSFORMER)
    names = fp8_layer_names(model, benchmark.FP8_LAYERS)
    for block in ("blocks.0", "blocks.39"):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                assert f"{block}.{attn}.{proj}" in names
        assert f"{block}.ffn.net.0.proj" in names and f"{block}.ffn.net.2" in names
    assert len(names) == 40 * 10  # 4 + 4 attention projections and the FFN's two, in every block
    assert not any(n.startswith(("condition_embedder", "patch_embedding", "proj_out")) for n in names)
    assert [n for n, _ in benchmark.lora_targets(model)] == names  # the distill LoRA adapts the same linears
    linear_params = sum(model.get_submodule(n).weight.numel() for n in names)
    assert linear_params / sum(p.numel() for p in model.parameters()) > 0.95  # nearly all of the 14B


def test_forward_flops_match_the_counter() -> None:
    config = tiny._transformer_kwargs()
    shape = benchmark.Shape(64, 64, 5)
    torch.manual_seed(0)
    model = WanTransformer3DModel(**config).eval()
    _, f, h, w = shape.latent
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(
            hidden_states=torch.randn(1, Z_DIM, f, h, w),
            timestep=torch.full((1,), 500.0),
            encoder_hidden_states=torch.randn(1, benchmark.TEXT_TOKENS, config["text_dim"]),
            return_dict=False,
        )
    counted = counter.get_total_flops()  # on the CPU it counts no SDPA
    assert abs(benchmark.forward_flops(config, shape, attention=False) - counted) / counted < 0.01
    tokens = benchmark.transformer_tokens(config, shape)
    attention = benchmark.forward_flops(config, shape) - benchmark.forward_flops(config, shape, attention=False)
    assert attention == config["num_layers"] * 4 * tokens * (tokens + benchmark.TEXT_TOKENS) * 24


def test_a_shallow_run_is_extrapolated_to_full_depth_by_its_forwards() -> None:
    from perf.report import Row

    nan = float("nan")
    measured = Row("H200", "wan", "registry_cfg", 832, 480, 30, 150.0, 12.0, 30.0, 0.7, 0.01, 44.0, 20.0)
    full = benchmark.full_depth(measured, forwards=60, forward_ms=150.0, blocks=10, full_blocks=40)
    # 60 forwards of 150 ms for 10 blocks: the other 30 blocks add 3 x 9 s
    assert full.end_to_end_s == 12.0 + 27.0 and full.step_ms == 600.0
    assert full.variant == "registry_cfg_40blocks_extrapolated"
    served = dataclasses.replace(measured, variant="served_triton_cfg", step_ms=nan)
    assert benchmark.full_depth(served, 60, 150.0, 10, 40).end_to_end_s == 39.0  # timed by ours in process


def test_the_served_run_is_the_two_expert_route() -> None:
    with pytest.raises(SystemExit):
        benchmark.main(["--served", "--tiny"])  # /wan2.6 serves Wan2.2-T2V-A14B: --layout a14b
