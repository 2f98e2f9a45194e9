"""The benchmarks' arithmetic and the FP8 linear of the GPU path, checked on the CPU (the GPU runs are in
perf/results/; each family's choice of FP8 layers is tested in its folder)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.fp8 import Fp8Linear
from perf.metrics import cost_usd, mfu, psnr, speedup


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
