"""The benchmark's arithmetic and the GPU speed-up's choice of layers, checked on the CPU (the GPU runs are in
perf/results/)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel

from components.fp8 import Fp8Linear, fp8_layer_names
from perf import gpu_benchmark
from perf.metrics import cost_usd, mfu, psnr, speedup
from registry import component_of


def test_mfu_and_cost() -> None:
    # 989 TFLOP in one second on a 989 TFLOP/s part is 100 %.
    assert mfu(989e12, 1.0) == pytest.approx(1.0)
    assert mfu(74.5e12, 0.183) == pytest.approx(0.4116, abs=1e-3)  # design.md: FLUX-dev 183 ms/step ~ 41 % MFU
    assert cost_usd(2.0) == pytest.approx(0.002194)
    assert speedup(5.3, 1.6) == pytest.approx(3.3125)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0)


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert math.isinf(psnr(a, a))
    b = a.copy()
    b[0, 0, 0] = 255
    assert psnr(a, b) == pytest.approx(10 * math.log10(48), abs=1e-9)
    with pytest.raises(ValueError):
        psnr(a, np.zeros((2, 2, 3), np.uint8))


def test_fp8_layers_are_the_block_matmuls_in_use(stack_dirs) -> None:
    from checkpoints import resolve

    path = resolve("flux-dev", "tiny", stack_dirs.checkpoints).path / "transformer"
    model = FluxTransformer2DModel.from_pretrained(path)
    pattern = component_of("flux_dev_transformer")[1].fp8_layers
    names = fp8_layer_names(model, pattern)
    assert "transformer_blocks.0.ff.net.2" in names and "single_transformer_blocks.0.proj_out" in names
    assert not any("norm" in n or "embed" in n or n == "proj_out" for n in names)  # sensitive layers stay BF16
    model.fuse_qkv_projections()
    fused = fp8_layer_names(model, pattern)
    assert "transformer_blocks.0.attn.to_qkv" in fused and "transformer_blocks.0.attn.to_q" not in fused


def test_fp8_linear_keeps_shape_and_weights_close() -> None:
    linear = torch.nn.Linear(64, 32)
    fp8 = Fp8Linear(linear)
    restored = fp8.weight_fp8.float() * fp8.weight_scale.t()
    # e4m3 keeps 3 mantissa bits: relative error per weight under 2^-4.
    assert torch.all((restored - linear.weight).abs() <= linear.weight.abs() * 2**-4 + 1e-6)
    assert fp8.weight_scale.shape == (1, 32)


@pytest.mark.parametrize("rows", [12, 100])  # bias added after the GEMM / fused into it (FUSED_BIAS_MIN_ROWS)
def test_fp8_linear_computes_the_linear_with_its_bias(rows: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    with torch.no_grad():
        linear.bias.fill_(10.0)  # a dropped bias would be off by far more than FP8 rounding
    x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        y, ref = Fp8Linear(linear)(x).float(), linear(x).float()
    assert y.shape == (1, rows, 32)
    assert (y - ref).norm() / ref.norm() < 0.02


def test_benchmark_knows_the_real_configs() -> None:
    assert (
        gpu_benchmark.FLUX_TRANSFORMER["num_layers"] == 19 and gpu_benchmark.FLUX_TRANSFORMER["num_single_layers"] == 38
    )
    assert sum(gpu_benchmark.FLUX_TRANSFORMER["axes_dims_rope"]) == gpu_benchmark.FLUX_TRANSFORMER["attention_head_dim"]
    assert gpu_benchmark.MODELS["dev"][0] == 28 and gpu_benchmark.MODELS["schnell"][0] == 4
    assert gpu_benchmark.VARIANTS["eager"] is None


def test_qwen_fp8_layers_are_each_blocks_twelve_matmuls(stack_dirs) -> None:
    from diffusers import QwenImageTransformer2DModel

    from checkpoints import resolve

    path = resolve("qwen-image-2512", "tiny", stack_dirs.checkpoints).path / "transformer"
    model = QwenImageTransformer2DModel.from_pretrained(path)
    names = fp8_layer_names(model, component_of("qwen_image_transformer")[1].fp8_layers)
    # q/k/v/out of both streams, and the two linears of each stream's MLP (720 at 60 blocks full size)
    assert len(names) == 12 * len(model.transformer_blocks)
    assert "transformer_blocks.0.img_mlp.net.2" in names and "transformer_blocks.0.attn.to_add_out" in names
    assert not any("mod" in n or "norm" in n or n.startswith(("img_in", "txt_in", "proj_out")) for n in names)


def test_qwen_benchmark_runs_on_tiny_weights(tmp_path) -> None:
    """The GPU benchmark's code path (eager pipeline vs our proxy + served module) as a CPU dry run: the served
    path's image equals eager's up to float noise, and the CSV has both routes' rows."""
    import csv

    from perf import qwen_benchmark

    assert qwen_benchmark.main(["--smoke", "--variants", "eager,ours", "--size", "256", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "qwen_image_cpu_smoke.csv").open()))
    assert {(r["model"], r["variant"]) for r in rows} == {
        (m, v) for m in ("qwen-image-2512", "qwen-image-2512-fast") for v in ("eager", "ours")
    }
    assert all(float(r["psnr_vs_eager_db"]) > 60 for r in rows if r["variant"] == "ours")


def test_qwen_text_encoder_benchmark_runs_on_the_tiny_encoder(tmp_path) -> None:
    import csv

    from perf import qwen_text_encoder_benchmark

    assert qwen_text_encoder_benchmark.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "qwen_text_encoder_cpu_smoke.csv").open()))
    by_case = {r["case"]: r for r in rows}
    # The edit prompt carries the condition image's tokens (vision tower), the text-to-image one does not.
    assert int(by_case["edit_one_image"]["text_tokens"]) > int(by_case["text_to_image"]["text_tokens"]) > 0


def test_qwen_served_benchmark_assembles_its_checkpoint_and_times_the_plain_pipeline(tmp_path) -> None:
    """The served Qwen benchmark's CPU dry run: the checkpoint folder it assembles loads in the stock pipeline, which
    runs at both step counts (the served side needs a GPU; tiny CPU timings are too noisy to check)."""
    import csv

    from perf import qwen_served

    argv = ["--smoke", "--size", "256", "--steps", "3", "--short-steps", "1", "--work", str(tmp_path), "--out"]
    assert qwen_served.main([*argv, str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "qwen_served_cpu_smoke.csv").open()))
    assert [r["variant"] for r in rows] == ["eager"]
    assert float(rows[0]["end_to_end_s"]) > 0
    assert (tmp_path / "checkpoint" / "model_index.json").is_file()
