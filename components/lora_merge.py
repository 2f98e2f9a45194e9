"""Merge a LoRA into a diffusers transformer at build time, with diffusers' own loading and key conversion.

The result is a plain module (no PEFT layers left) with the same parameter names as the base, so the exported ONNX
has the same initializer names and a refit or a manifest compares like with like (export/ keys the artifact by the
LoRA file's hash). Per-request LoRAs go through the same loading (components/lora_weights.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .lora_weights import inject

ADAPTER_NAME = "merged"  # transient: loaded, fused, then unloaded within merge_lora


def merge_lora(
    module: torch.nn.Module, lora_file: Path, pipeline_class_name: str, scale: float = 1.0
) -> torch.nn.Module:
    """Fuse `lora_file` into `module` (a diffusers transformer with PeftAdapterMixin), in place.

    The same steps as `pipe.load_lora_weights(file); pipe.fuse_lora(lora_scale=scale); pipe.unload_lora_weights()`.
    Fails when a LoRA module matches nothing in `module` (a wrong pipeline or a key layout diffusers did not
    convert), rather than silently building the base model.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        raise ValueError(f"{type(module).__name__} already holds PEFT layers: merge into a freshly loaded module")
    inject(module, lora_file, pipeline_class_name, ADAPTER_NAME, field=str(lora_file))
    module.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER_NAME])
    module.unload_lora()  # drops the PEFT wrappers, keeping the fused base weights under their own names
    return module
