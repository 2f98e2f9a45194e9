"""The arithmetic of the benchmarks: utilisation, cost and image difference. Pure Python + numpy, tested on CPU."""

from __future__ import annotations

import math

import numpy as np

H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM, dense BF16 tensor-core peak
H100_PRICE_PER_SECOND = 0.001097  # US$, as billed per GPU-second (api.md's default)


def mfu(flops_per_call: float, seconds_per_call: float, peak_flops: float = H100_BF16_DENSE_FLOPS) -> float:
    """Model FLOP utilisation: achieved FLOP/s over the peak (0..1)."""
    if seconds_per_call <= 0:
        raise ValueError("seconds_per_call must be positive")
    return flops_per_call / seconds_per_call / peak_flops


def cost_usd(seconds: float, price_per_second: float = H100_PRICE_PER_SECOND) -> float:
    return seconds * price_per_second


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two images of the same shape (inf when identical)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def speedup(baseline_s: float, ours_s: float) -> float:
    return baseline_s / ours_s
