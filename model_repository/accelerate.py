"""GPU speed-ups for a component's torch module, in the way the H100 anchors do it (flux-fast, Modal's FLUX
example): fused QKV projections, a fused attention backend, FP8 row-wise matmuls for the transformer blocks' large
linears, and torch.compile with its caches on disk.

Used by the GPU profile's torch component models and by perf/gpu_benchmark.py, so the benchmark times the code
that serves. Nothing here runs on the CPU except the choice of layers (tested).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

E4M3_MAX = 448.0


@dataclass(frozen=True)
class Acceleration:
    fuse_qkv: bool = True
    attention_backend: str | None = None  # diffusers backend name, e.g. "_native_cudnn"; None keeps SDPA's choice
    # The linears to run in FP8 (registry Component.fp8_layers, a full-match regex over named_modules); None: BF16.
    fp8_layers: str | None = None
    compile: bool = True
    compile_mode: str | None = None  # torch.compile mode; None is inductor's default (no autotuning)
    # CUDA graphs (torch.compile's "reduce-overhead" mode, one graph per input shape): one launch per step instead of
    # thousands of kernel launches, which a served step exposes (each BLS hand-off synchronises).
    cuda_graphs: bool = False
    # Regional compilation: each repeated block compiled on its own (one compiled code for all 60 Qwen blocks);
    # the forward around them stays eager, so the served module's per-call tensors (rotary tables) pass freely.
    compile_blocks: bool = False

    @property
    def fp8(self) -> bool:
        return self.fp8_layers is not None

    @classmethod
    def of(cls, accelerations: set[str], precision: str, fp8_layers: str | None = None) -> Acceleration:
        """The speed-ups the registry names for a component (Component.accelerations, .precision, .fp8_layers)."""
        unknown = accelerations - set(ACCELERATIONS)
        if unknown:
            raise ValueError(f"unknown accelerations {sorted(unknown)}; known: {ACCELERATIONS}")
        if precision == "fp8" and not fp8_layers:
            raise ValueError("precision 'fp8' needs fp8_layers (registry Component.fp8_layers)")
        return cls(
            fuse_qkv="fuse_qkv" in accelerations,
            fp8_layers=fp8_layers if precision == "fp8" else None,
            compile="compile" in accelerations or "cuda_graphs" in accelerations,
            cuda_graphs="cuda_graphs" in accelerations,
            compile_blocks="compile_blocks" in accelerations,
        )


# The names Component.accelerations may use.
ACCELERATIONS = ("fuse_qkv", "compile", "cuda_graphs", "compile_blocks")


# cuBLASLt (CUDA 13.0 under torch 2.11, H100) has no row-wise FP8 GEMM with the bias fused for K=12288, N=3072 and
# M <= 32 (CUBLAS_STATUS_NOT_SUPPORTED; Qwen-Image's txt_mlp down projection on a short prompt): below this many rows
# the bias is added after the GEMM; above, it stays fused in the GEMM's epilogue.
FUSED_BIAS_MIN_ROWS = 64


class Fp8Linear(torch.nn.Module):
    """y = x W^T + b with W stored in float8 e4m3 (one scale per output channel) and x quantised per token on the
    fly; `torch._scaled_mm` runs it on Hopper's FP8 tensor cores and returns BF16."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
        self.register_buffer("weight_fp8", (weight / scale).to(torch.float8_e4m3fn))
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        rows = x2.shape[0]
        if rows % 16:  # cuBLASLt's FP8 GEMMs want every dim a multiple of 16 (Qwen-Image 1328²: 6889 image tokens)
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


def enable_compile_cache(cache_dir: Path) -> None:
    """Inductor's FX-graph and autograd caches on disk: a container that starts again skips recompilation."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def accelerate(module: torch.nn.Module, how: Acceleration, log: Callable[[str], None] = print) -> torch.nn.Module:
    """Apply `how` to a diffusers transformer in place (BF16, on CUDA); returns the module to call."""
    if how.fuse_qkv and hasattr(module, "fuse_qkv_projections"):
        module.fuse_qkv_projections()
        log("fused QKV projections")
    if how.attention_backend and hasattr(module, "set_attention_backend"):
        module.set_attention_backend(how.attention_backend)
        log(f"attention backend {how.attention_backend}")
    if how.fp8:
        count = swap_fp8_linears(module, fp8_layer_names(module, how.fp8_layers))
        log(f"{count} linears in FP8 (row-wise scaled)")
    if how.compile_blocks:
        names = set(getattr(module, "_repeated_blocks", ()))
        blocks = [m for m in module.modules() if type(m).__name__ in names]
        for block in blocks:
            block.forward = torch.compile(block.forward, dynamic=False)
        log(f"torch.compile of {len(blocks)} repeated blocks ({', '.join(sorted(names))})")
    if how.compile:
        mode = how.compile_mode or ("reduce-overhead" if how.cuda_graphs else None)
        module.forward = torch.compile(module.forward, mode=mode, fullgraph=False, dynamic=False)
        log(f"torch.compile mode={mode or 'default'}")
    return module
