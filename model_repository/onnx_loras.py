"""Per-request LoRA sets on the CPU profile: one ONNX Runtime session per LoRA set, made from the exported graph with
the adapted weights replaced by base + delta, everything else as exported. The base session serves requests without
LoRA and is never changed; a small LRU keeps the sessions of recent sets, so two requests with different LoRAs, even
interleaved step by step, each run on their own weights.

Export keeps the torch parameter names as initializer names (export/onnx_export.py: no optimizer), so a weight
map in diffusers' names (components/lora_weights.py) finds its initializers as "<adapter prefix>.<name>". The new
values go into the model itself, not through `SessionOptions.add_initializer`: ONNX Runtime's constant folding
(a linear's weight transpose) reads the exported values and would silently keep the base weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from components.lora_set import LoraMismatch, LoraSet
from components.lora_weights import LoraReader, Lru, merged

ADAPTER_PREFIX = "model."  # components/adapters.py wraps each diffusers module as `.model`


@dataclass
class Built:
    session: ort.InferenceSession
    changed: tuple[str, ...]  # the initializers this set replaced
    seconds: float


class OnnxLoras:
    def __init__(
        self,
        onnx_path: Path,
        module_dir: Path,
        pipeline_class_name: str,
        make_session: Callable[[str | bytes], ort.InferenceSession],
        cache_size: int = 4,
    ) -> None:
        self.onnx_path = onnx_path
        self.make_session = make_session
        self.base = make_session(str(onnx_path))
        self.reader = LoraReader(module_dir, pipeline_class_name)
        self.model = onnx.load(str(onnx_path))  # with its weights: each set's model is this one with a few replaced
        self._index = {init.name: i for i, init in enumerate(self.model.graph.initializer)}
        self.sessions: Lru[tuple, Built] = Lru(cache_size)
        self.last: Built | None = None

    def session(self, loras: LoraSet | None) -> ort.InferenceSession:
        if loras is None or not loras.files:
            return self.base
        self.last = self.sessions.get(loras.key, lambda: self._build(loras))
        return self.last.session

    def merged_model(self, loras: LoraSet) -> tuple[bytes, tuple[str, ...]]:
        """The serialized model with `loras` merged (from the base weights), and the initializers it changed.

        A weight the export pruned (a module whose output the model discards, like the last block's text-stream
        projection) changes nothing in diffusers either and is skipped; a LoRA none of whose weights the graph
        holds is refused."""
        updates = self.reader.updates(loras)
        for f in loras.files:
            names = {f"{module}.{kind}" for module in self.reader.read(f) for kind in ("weight", "bias")}
            if not any(ADAPTER_PREFIX + n in self._index for n in names & set(updates)):
                raise LoraMismatch(f.field, f"{f.field}: adapts nothing the served graph holds")
        held = {name: terms for name, terms in updates.items() if ADAPTER_PREFIX + name in self._index}
        initializers = self.model.graph.initializer
        base = {
            name: torch.from_numpy(numpy_helper.to_array(initializers[self._index[ADAPTER_PREFIX + name]]).copy())
            for name in held
        }
        originals: dict[int, onnx.TensorProto] = {}
        try:
            for name, weight in merged(base, held):
                index = self._index[ADAPTER_PREFIX + name]
                originals[index] = onnx.TensorProto()
                originals[index].CopyFrom(initializers[index])
                initializers[index].CopyFrom(numpy_helper.from_array(weight.numpy(), ADAPTER_PREFIX + name))
            return self.model.SerializeToString(), tuple(sorted(ADAPTER_PREFIX + n for n in held))
        finally:  # the held model stays the base one
            for index, original in originals.items():
                initializers[index].CopyFrom(original)

    def _build(self, loras: LoraSet) -> Built:
        t0 = time.perf_counter()
        model, changed = self.merged_model(loras)
        return Built(self.make_session(model), changed, time.perf_counter() - t0)
