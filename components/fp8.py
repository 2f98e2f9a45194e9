"""FP8 for the transformer blocks' large linears in torch (the GPU profile's torch runtime): which linears
(`fp8_layer_names`, from the registry's Component.fp8_layers; the TensorRT Q/DQ graph of export/fp8_qdq.py uses
the same rule) and `Fp8Linear`, which runs one on Hopper's FP8 tensor cores through `torch._scaled_mm`.
"""

from __future__ import annotations

import re

import torch

E4M3_MAX = 448.0  # the largest finite float8 e4m3fn


# cuBLASLt (CUDA 13.0 under torch 2.11, H100) has no row-wise FP8 GEMM with the bias fused for K=12288, N=3072 and
# M <= 32 (CUBLAS_STATUS_NOT_SUPPORTED; a text-stream MLP's down projection on a short prompt): below this many rows
# the bias is added after the GEMM; above, it stays fused in the GEMM's epilogue.
FUSED_BIAS_MIN_ROWS = 64


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8 e4m3 weight, its per-output-channel scale as [out, 1]) of a [out, in] weight."""
    weight = weight.float()
    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (weight / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(torch.nn.Module):
    """y = x W^T + b with W stored in float8 e4m3 (one scale per output channel) and x quantised per token on the
    fly; `torch._scaled_mm` runs it on Hopper's FP8 tensor cores and returns BF16."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight_fp8, scale = quantize(linear.weight.detach())
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def set_rows(self, rows: slice, weight: torch.Tensor) -> None:
        """Re-quantise output rows `rows` from a higher-precision `weight` (a LoRA merged from the base), in place:
        the buffers keep their memory, so compiled code and CUDA graphs that read them stay valid."""
        weight_fp8, scale = quantize(weight)
        self.weight_fp8[rows].copy_(weight_fp8)
        self.weight_scale[:, rows].copy_(scale.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rows = x2.shape[0]
        if rows % 16:  # cuBLASLt's FP8 GEMMs want every dim a multiple of 16 (83 x 83 = 6889 image tokens at 1328²)
            x2 = torch.nn.functional.pad(x2, (0, 0, 0, 16 - rows % 16))
        x_scale = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
        x_fp8 = (x2.float() / x_scale).to(torch.float8_e4m3fn)
        fuse_bias = x2.shape[0] >= FUSED_BIAS_MIN_ROWS
        y = torch._scaled_mm(
            x_fp8,
            self.weight_fp8.t(),
            scale_a=x_scale,
            scale_b=self.weight_scale,
            bias=self.bias if fuse_bias else None,
            out_dtype=torch.bfloat16,
            use_fast_accum=True,
        )
        if self.bias is not None and not fuse_bias:
            y = y + self.bias.to(y.dtype)
        return y[:rows].reshape(*shape[:-1], self.out_features)


_SEPARATE_QKV = {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}
_FUSED_QKV = {"to_qkv", "to_added_qkv"}


def _in_use(module: torch.nn.Module, name: str) -> bool:
    """After QKV fusion the separate projections stay as modules but are never called (and vice versa)."""
    parent_name, _, leaf = name.rpartition(".")
    fused = bool(getattr(module.get_submodule(parent_name), "fused_projections", False))
    return leaf not in (_SEPARATE_QKV if fused else _FUSED_QKV)


def fp8_layer_names(module: torch.nn.Module, pattern: str) -> list[str]:
    """The linears to run in FP8: those the pattern (registry Component.fp8_layers) fully matches, in use, whose sizes
    FP8 GEMMs take (multiples of 16). The TensorRT Q/DQ graph (export/fp8_qdq.py) uses the same rule."""
    regex = re.compile(pattern)
    return [
        name
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.Linear)
        and regex.fullmatch(name)
        and _in_use(module, name)
        and child.in_features % 16 == 0
        and child.out_features % 16 == 0
    ]


def swap_fp8_linears(module: torch.nn.Module, names: list[str]) -> int:
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, Fp8Linear(getattr(parent, attr)))
    return len(names)
