"""Merge a LoRA into a diffusers transformer at build time, with diffusers' own loading and key conversion.

The result is a plain module (no PEFT layers left) with the same parameter names as the base, so the exported ONNX
has the same initializer names and a refit or a manifest compares like with like (export/ keys the artifact by the
LoRA file's hash).
"""

from __future__ import annotations

from pathlib import Path

import torch

ADAPTER_NAME = "merged"  # transient: loaded, fused, then unloaded within merge_lora
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_magnitude_vector")


def _pipeline_class(name: str) -> type:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "lora_state_dict"):
        raise ValueError(f"{name} is no diffusers pipeline with LoRA loading (lora_state_dict)")
    return cls


def merge_lora(
    module: torch.nn.Module, lora_file: Path, pipeline_class_name: str, scale: float = 1.0
) -> torch.nn.Module:
    """Fuse `lora_file` into `module` (a diffusers transformer with PeftAdapterMixin), in place.

    The same steps as `pipe.load_lora_weights(file); pipe.fuse_lora(lora_scale=scale); pipe.unload_lora_weights()`:
    `<Pipeline>.lora_state_dict` reads the file and converts non-diffusers key layouts (kohya, "diffusion_model.",
    ...), `load_lora_adapter` injects PEFT layers, `fuse_lora` merges them into the base weights, `unload_lora`
    removes the PEFT layers. Fails when a LoRA module matches nothing in `module` (a wrong pipeline or a key layout
    diffusers did not convert), rather than silently building the base model.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipeline = _pipeline_class(pipeline_class_name)
    if not hasattr(module, "load_lora_adapter"):
        raise TypeError(f"{type(module).__name__} cannot load LoRA adapters (no diffusers PeftAdapterMixin)")
    if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        raise ValueError(f"{type(module).__name__} already holds PEFT layers: merge into a freshly loaded module")

    loaded = pipeline.lora_state_dict(str(lora_file), return_lora_metadata=True)
    # Most pipelines return (state_dict, metadata); some put network alphas in between.
    state_dict, metadata = loaded[0], loaded[-1]
    prefix = getattr(pipeline, "transformer_name", "transformer")
    keys = [k for k in state_dict if k.startswith(f"{prefix}.")]
    if not keys or not all("lora" in k for k in keys):
        raise ValueError(f"{lora_file}: no '{prefix}.*lora*' keys after {pipeline_class_name}'s conversion")
    targets = {k.removeprefix(f"{prefix}.").removesuffix(s) for k in keys for s in _LORA_SUFFIXES if k.endswith(s)}

    module.load_lora_adapter(state_dict, prefix=prefix, adapter_name=ADAPTER_NAME, metadata=metadata)
    injected = {name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}
    missing = targets - injected
    if missing:
        module.unload_lora()
        raise ValueError(f"{lora_file}: {len(missing)} LoRA modules match nothing, e.g. {sorted(missing)[:3]}")
    module.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER_NAME])
    module.unload_lora()  # drops the PEFT wrappers, keeping the fused base weights under their own names
    return module
