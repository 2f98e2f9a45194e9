"""GPU speed-ups for a component's torch module, in the way the H100 anchors do it (Hugging Face's fast-diffusion
recipes, Modal's diffusion examples): fused QKV projections, a fused attention backend, FP8 row-wise matmuls for
the transformer blocks' large linears, and torch.compile with its caches on disk.

Used by the GPU profile's torch component models and by the family folders' GPU benchmarks, so a benchmark times
the code that serves. Nothing here runs on the CPU except the choice of layers (tested).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from components.fp8 import fp8_layer_names, swap_fp8_linears


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
    # Regional compilation: each repeated block compiled on its own (one compiled code for all of a DiT's blocks);
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
