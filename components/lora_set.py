"""A request's LoRA set as it crosses from the API to the models (the LORAS tensor), and the error a model answers
for a LoRA it cannot apply. Apart from lora_weights.py, which needs torch: the API and the ONNX component models
read these without importing it."""

from __future__ import annotations

import json
from dataclasses import dataclass


class LoraMismatch(ValueError):
    """A LoRA this component cannot apply (its keys match nothing, or adapt what is not served): api/ answers 422
    naming `field`, the request field that named the file."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LoraFile:
    """One LoRA of a request's set, as the API resolved it."""

    path: str  # the local .safetensors file (LoRA store or fetch cache), checked by the API (loras/)
    key: str  # what identifies its content: "sha256:<hex>" for a fetched file, "file:<name>:<size>:<mtime_ns>"
    scale: float
    label: str  # how x-model names it: the store file's name, or "url:<sha256 prefix>"; never a server path
    field: str = "lora_name"  # the request field it came from, for errors


@dataclass(frozen=True)
class LoraSet:
    """The LoRAs of one request, in request order; crosses to the pipeline model as the LORAS tensor."""

    files: tuple[LoraFile, ...]

    @property
    def key(self) -> tuple[tuple[str, float], ...]:
        return tuple((f.key, f.scale) for f in self.files)

    @property
    def label(self) -> str:
        return "+".join(f"lora:{f.label}@{f.scale:g}" for f in self.files)

    def encode(self) -> bytes:
        return json.dumps([f.__dict__ for f in self.files], separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> LoraSet:
        return cls(tuple(LoraFile(**row) for row in json.loads(data)))
