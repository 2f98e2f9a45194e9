"""Per-request LoRA sets as weight updates of one component, always from its base weights.

A LoRA file is read the way diffusers reads it for the family's pipeline (`<Pipeline>.lora_state_dict` converts
kohya, ai-toolkit, musubi-tuner, ... layouts to PEFT's) and injected by diffusers' `load_lora_adapter` (PEFT's own
config: ranks, alphas, per-module patterns) into a *weightless skeleton* of the module: the real module classes from
its config.json, every parameter a zero-stride view of one scalar, so a 12B transformer costs no memory. What is read
off the injected PEFT layers is each adapted linear's low-rank factors and PEFT scaling: the weight map. Every runtime
applies the same map: ONNX Runtime gets new initializers for a new session (model_repository/component_model.py), the
torch GPU path updates its weights in place (components/lora_apply.py), a TensorRT refitter would take the same
arrays. Merging is W + sum_i strength_i * scaling_i * B_i @ A_i, computed from the base W every time, so switching
A -> B -> A gives exactly A's weights again.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from .lora_set import LoraFile, LoraMismatch, LoraSet

ADAPTER = "request"  # transient: injected into the skeleton, read, then unloaded
_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_magnitude_vector")

# The linears a sample LoRA adapts: every attention block's query, key, value and output projections.
_ATTENTION = re.compile(r".*\.(attn|attention|attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)")  # attn1/attn2: Wan

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class LowRank:
    """One adapted linear of one LoRA file: delta W = scaling * up @ down (delta b = scaling * up_bias)."""

    down: torch.Tensor  # lora_A: rank x in_features
    up: torch.Tensor  # lora_B: out_features x rank
    scaling: float  # PEFT's alpha / rank (or alpha / sqrt(rank) with rsLoRA)
    up_bias: torch.Tensor | None = None


class Lru(Generic[K, V]):
    """The few most recently used entries; `get` builds a missing one and evicts the oldest beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, build: Callable[[], V]) -> V:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = build()
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def lora_pipeline_class(name: str) -> type:
    """The diffusers pipeline class whose LoRA loader (lora_state_dict: the key conversions) serves a family."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "lora_state_dict"):
        raise ValueError(f"{name} is no diffusers pipeline with LoRA loading (lora_state_dict)")
    return cls


def weightless(module_dir: Path) -> torch.nn.Module:
    """The diffusers module of `module_dir` (a checkpoint subfolder) built from its config alone: every parameter
    and buffer a zero-stride view of one zero, so shapes and names are real and no memory is held."""
    import diffusers
    from accelerate import init_empty_weights

    config = json.loads((module_dir / "config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    with init_empty_weights(include_buffers=True):
        module = cls.from_config(cls.load_config(module_dir))
    for child in module.modules():
        for name, p in list(child.named_parameters(recurse=False)):
            empty = torch.zeros((), dtype=p.dtype).expand(p.shape)
            setattr(child, name, torch.nn.Parameter(empty, requires_grad=False))
        for name, b in list(child.named_buffers(recurse=False)):
            child.register_buffer(name, torch.zeros((), dtype=b.dtype).expand(b.shape))
    return module


def inject(module: torch.nn.Module, lora_file: Path, pipeline_class_name: str, adapter: str, field: str) -> set[str]:
    """Load `lora_file` into `module` as PEFT adapter `adapter` through diffusers (conversion, config); returns the
    names of the adapted modules. Raises LoraMismatch, with nothing left injected, when the file adapts anything
    `module` does not have (a LoRA of another model, another component, or a layout diffusers did not convert)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipeline = lora_pipeline_class(pipeline_class_name)
    if not hasattr(module, "load_lora_adapter"):
        raise TypeError(f"{type(module).__name__} cannot load LoRA adapters (no diffusers PeftAdapterMixin)")
    try:
        loaded = pipeline.lora_state_dict(str(lora_file), return_lora_metadata=True)
    except (ValueError, KeyError, RuntimeError) as exc:  # diffusers' converters raise these on a foreign layout
        raise LoraMismatch(field, f"{field}: not a LoRA of this model ({exc})") from exc
    state_dict, metadata = loaded[0], loaded[-1]  # some pipelines put network alphas in between
    prefix = getattr(pipeline, "transformer_name", "transformer")
    others = sorted({k.split(".")[0] for k in state_dict if not k.startswith(f"{prefix}.")})
    if others:
        raise LoraMismatch(field, f"{field}: the LoRA also adapts {others}; served LoRAs adapt the {prefix} only")
    keys = [k for k in state_dict if "lora" in k]
    if not keys or len(keys) != len(state_dict):
        raise LoraMismatch(field, f"{field}: no '{prefix}.*lora*' keys after {pipeline_class_name}'s conversion")
    if any(k.endswith(".lora_magnitude_vector") for k in keys):
        raise LoraMismatch(field, f"{field}: DoRA LoRAs (lora_magnitude_vector) are not served")
    targets = {k.removeprefix(f"{prefix}.").removesuffix(s) for k in keys for s in _SUFFIXES if k.endswith(s)}
    try:
        module.load_lora_adapter(
            state_dict, prefix=prefix, adapter_name=adapter, metadata=metadata, low_cpu_mem_usage=True
        )
    except (ValueError, RuntimeError) as exc:  # no such modules (PEFT), or shapes of another model size
        _unload(module)
        if "not found in the base model" in str(exc):
            raise LoraMismatch(field, f"{field}: its LoRA modules match nothing, e.g. {sorted(targets)[:3]}") from exc
        raise LoraMismatch(field, f"{field}: does not fit this model ({str(exc)[:200]})") from exc
    injected = {name for name, m in module.named_modules() if isinstance(m, BaseTunerLayer)}
    missing = targets - injected
    if missing:
        _unload(module)
        raise LoraMismatch(field, f"{field}: {len(missing)} LoRA modules match nothing, e.g. {sorted(missing)[:3]}")
    return injected


def _unload(module: torch.nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        module.unload_lora()


class LoraReader:
    """Reads LoRA files as the weight map of one component (diffusers module names, no adapter prefix), on the
    weightless skeleton of its module; recently read files stay (small: the factors only)."""

    def __init__(self, module_dir: Path, pipeline_class_name: str, cache_size: int = 8) -> None:
        self.skeleton = weightless(module_dir)
        self.pipeline_class_name = pipeline_class_name
        self.shapes = {name: tuple(p.shape) for name, p in self.skeleton.named_parameters()}
        self._read: Lru[str, dict[str, LowRank]] = Lru(cache_size)

    def read(self, lora: LoraFile) -> dict[str, LowRank]:
        """module name ("transformer_blocks.0.attn.to_q") -> its low-rank factors, at PEFT's scaling."""
        return self._read.get(lora.key, lambda: self._factors(lora))

    def _factors(self, lora: LoraFile) -> dict[str, LowRank]:
        from peft.tuners.lora import Linear as LoraLinear

        injected = inject(self.skeleton, Path(lora.path), self.pipeline_class_name, ADAPTER, lora.field)
        try:
            factors = {}
            for name in sorted(injected):
                layer = self.skeleton.get_submodule(name)
                if not isinstance(layer, LoraLinear) or layer.fan_in_fan_out:
                    raise LoraMismatch(lora.field, f"{lora.field}: adapts {name}, which is not a plain linear")
                up = layer.lora_B[ADAPTER]
                factors[name] = LowRank(
                    down=layer.lora_A[ADAPTER].weight.detach().clone(),
                    up=up.weight.detach().clone(),
                    scaling=float(layer.scaling[ADAPTER]),
                    up_bias=None if up.bias is None else up.bias.detach().clone(),
                )
            return factors
        finally:
            _unload(self.skeleton)

    def updates(self, loras: LoraSet) -> dict[str, list[tuple[LowRank, float]]]:
        """parameter name ("...to_q.weight", "...to_q.bias") -> the (factors, strength) that change it."""
        out: dict[str, list[tuple[LowRank, float]]] = {}
        for lora in loras.files:
            for module, low_rank in self.read(lora).items():
                out.setdefault(f"{module}.weight", []).append((low_rank, lora.scale))
                if low_rank.up_bias is not None:
                    if f"{module}.bias" not in self.shapes:
                        raise LoraMismatch(lora.field, f"{lora.field}: adds a bias to {module}, which has none")
                    out.setdefault(f"{module}.bias", []).append((low_rank, lora.scale))
        return out


def delta(name: str, terms: list[tuple[LowRank, float]], device: torch.device | None = None) -> torch.Tensor:
    """The float32 change of parameter `name` (a ".weight" or ".bias") that its terms make."""
    total: torch.Tensor | None = None
    for low_rank, strength in terms:
        factor = strength * low_rank.scaling
        if name.endswith(".bias"):
            term = low_rank.up_bias.to(device, torch.float32) * factor  # type: ignore[union-attr]
        else:
            term = (low_rank.up.to(device, torch.float32) @ low_rank.down.to(device, torch.float32)) * factor
        total = term if total is None else total + term
    assert total is not None
    return total


def merged(
    base: Mapping[str, torch.Tensor], updates: Mapping[str, list[tuple[LowRank, float]]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, base + delta) of every parameter the updates change, in the base's dtype, computed in float32."""
    for name, terms in updates.items():
        weight = base[name]
        yield name, (weight.float() + delta(name, terms, weight.device)).to(weight.dtype)


def sample_lora(module_dir: Path, out: Path, rank: int = 4, seed: int = 0, std: float = 0.3) -> Path:
    """A random LoRA for the module of `module_dir` in diffusers' own format (`transformer.<module>.lora_A.weight`),
    adapting every attention projection: what a build writes into the store as each LoRA route's sample
    (registry.tasks.sample_lora_name), so sample requests and smoke tests of those routes have a LoRA to load."""
    from safetensors.torch import save_file

    skeleton = weightless(module_dir)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, child in skeleton.named_modules():
        if isinstance(child, torch.nn.Linear) and _ATTENTION.fullmatch(name):
            down = torch.randn(rank, child.in_features, generator=generator) * std
            up = torch.randn(child.out_features, rank, generator=generator) * std
            tensors[f"transformer.{name}.lora_A.weight"] = down
            tensors[f"transformer.{name}.lora_B.weight"] = up
    if not tensors:
        raise ValueError(f"{module_dir}: no attention projections to adapt")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out
