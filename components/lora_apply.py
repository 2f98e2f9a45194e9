"""Per-request LoRA sets in a served torch module (the GPU profile's torch runtime), merged in place.

The base weights of every linear are copied once, before the speed-ups (fused QKV, FP8) change the module. A switch
to another LoRA set writes base + delta into the weights the forward reads, in their own memory (`copy_`, slices of
a fused QKV projection, an FP8 linear's re-quantised rows), so compiled code and captured CUDA graphs stay valid and
no step pays for the LoRA. The weights every switch writes come from the base copies, never from the previous set's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .fp8 import Fp8Linear
from .lora_set import LoraMismatch, LoraSet
from .lora_weights import LoraReader, LowRank, Lru, delta

# A separate projection -> (the fused projection diffusers' fuse_projections makes of it, its group in order).
_FUSED = {
    "to_q": ("to_qkv", ("to_q", "to_k", "to_v")),
    "to_k": ("to_qkv", ("to_q", "to_k", "to_v")),
    "to_v": ("to_qkv", ("to_q", "to_k", "to_v")),
    "add_q_proj": ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
    "add_k_proj": ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
    "add_v_proj": ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
}


@dataclass(frozen=True)
class Target:
    """Where one parameter of the diffusers module lives in the accelerated one: rows of a linear's weight or bias."""

    module: torch.nn.Module  # torch.nn.Linear or Fp8Linear
    rows: slice
    bias: bool

    def write(self, value: torch.Tensor) -> None:
        if self.bias:
            self.module.bias[self.rows].copy_(value)
        elif isinstance(self.module, Fp8Linear):
            self.module.set_rows(self.rows, value)
        else:
            self.module.weight[self.rows].copy_(value)


def target(root: torch.nn.Module, name: str) -> Target:
    """The Target of parameter `name` ("blocks.0.attn.to_q.weight"), following QKV fusion."""
    module_path, _, attr = name.rpartition(".")
    parent_path, _, leaf = module_path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if getattr(parent, "fused_projections", False) and leaf in _FUSED and hasattr(parent, _FUSED[leaf][0]):
        fused, group = _FUSED[leaf]
        sizes = [getattr(parent, n).out_features for n in group]
        start = sum(sizes[: group.index(leaf)])
        return Target(getattr(parent, fused), slice(start, start + sizes[group.index(leaf)]), attr == "bias")
    module = parent.get_submodule(leaf)
    return Target(module, slice(0, module.out_features), attr == "bias")


def base_copies(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every linear's weight and bias by parameter name, taken before any speed-up changes the module."""
    with torch.no_grad():
        return {
            f"{name}.{attr}": getattr(child, attr).detach().clone()
            for name, child in module.named_modules()
            if isinstance(child, torch.nn.Linear)
            for attr in ("weight", "bias")
            if getattr(child, attr) is not None
        }


class InPlaceLoras:
    def __init__(self, reader: LoraReader, base: dict[str, torch.Tensor], cache_size: int = 4) -> None:
        self.reader = reader
        self.base = base
        self.module: torch.nn.Module | None = None
        self.current: tuple = ()  # the key of the set now in the weights; () = the base weights
        self.current_names: tuple[str, ...] = ()
        self._updates: Lru[tuple, dict[str, list[tuple[LowRank, float]]]] = Lru(cache_size)
        self.last_switch_s = 0.0

    def bind(self, module: torch.nn.Module) -> None:
        """The module the forward runs, after its speed-ups (the names still those of the diffusers module)."""
        self.module = module

    def _on_device(self, loras: LoraSet) -> dict[str, list[tuple[LowRank, float]]]:
        device = next(iter(self.base.values())).device
        updates = self.reader.updates(loras)
        for name in updates:
            if name not in self.base:
                field = next((f.field for f in loras.files if name.rsplit(".", 1)[0] in self.reader.read(f)), "loras")
                raise LoraMismatch(field, f"{field}: adapts {name}, which is not a linear of the served module")

        def moved(low_rank: LowRank) -> LowRank:
            bias = None if low_rank.up_bias is None else low_rank.up_bias.to(device)
            return LowRank(low_rank.down.to(device), low_rank.up.to(device), low_rank.scaling, bias)

        return {name: [(moved(lr), s) for lr, s in terms] for name, terms in updates.items()}

    def apply(self, loras: LoraSet | None) -> float:
        """Put `loras` (None: the base weights) into the module's weights; returns the seconds the switch took."""
        key = loras.key if loras is not None and loras.files else ()
        if key == self.current:
            return 0.0
        if self.module is None:
            raise RuntimeError("InPlaceLoras.bind() was not called")
        t0 = time.perf_counter()
        updates = self._updates.get(key, lambda: self._on_device(loras)) if key else {}  # type: ignore[arg-type]
        self._write(set(self.current_names) | set(updates), updates)
        self.current, self.current_names = key, tuple(sorted(updates))
        if torch.cuda.is_available() and next(iter(self.base.values())).is_cuda:
            torch.cuda.synchronize()
        self.last_switch_s = time.perf_counter() - t0
        return self.last_switch_s

    def _write(self, names: Iterable[str], updates: dict[str, list[tuple[LowRank, float]]]) -> None:
        assert self.module is not None
        with torch.no_grad():
            for name in sorted(names):
                base = self.base[name]
                value = base if name not in updates else (base.float() + delta(name, updates[name], base.device))
                target(self.module, name).write(value.to(base.dtype))
