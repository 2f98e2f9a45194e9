"""The LoRA store: a folder of .safetensors files, found by the product's names (api.md, `lora_id` / `lora_name`).

A name is a strict pattern (no separators, no dot-dot), the file it resolves to must stay inside the store (a link
pointing out of it is refused) and must parse as safetensors: pickled checkpoints (.ckpt, .pt, .bin) are never
opened, so loading a LoRA can never run code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

SUFFIX = ".safetensors"
# A file name in the store: letters, digits, '.', '_', '-'; starts with a letter or digit (no '..', no hidden files).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
LORA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class UnsafeLora(ValueError):
    """A name or file the store refuses (api.md: 422 `invalid_request`, naming `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class LoraNotFound(LookupError):
    """No file by any of the names tried (api.md: 404 `not_found`, the message lists them)."""

    def __init__(self, field: str, tried: tuple[str, ...]) -> None:
        super().__init__(f"no LoRA in the store named {' or '.join(tried)}")
        self.field, self.tried = field, tried


def file_name(lora_name: str, field: str = "lora_name") -> str:
    """`lora_name` as a store file name: `.safetensors` added when it has no suffix; any other suffix refused."""
    if not NAME.fullmatch(lora_name) or ".." in lora_name:
        raise UnsafeLora(field, f"{field} must match {NAME.pattern} (a file name in the LoRA store, no path)")
    if lora_name.endswith(SUFFIX):
        return lora_name
    if Path(lora_name).suffix.lower() in {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}:
        raise UnsafeLora(field, f"{field}: only .safetensors LoRAs are served, never pickled weights")
    return lora_name + SUFFIX


def candidates(lora_id: str, prefix: str | None) -> tuple[str, ...]:
    """The file names a `lora_id` is looked up as, in api.md's order: the family's own first, where it has one."""
    if not LORA_ID.fullmatch(lora_id):
        raise UnsafeLora("lora_id", f"lora_id must match {LORA_ID.pattern}")
    own = (f"{prefix}-character-{lora_id}{SUFFIX}",) if prefix else ()
    return (*own, f"character-{lora_id}{SUFFIX}")


@dataclass(frozen=True)
class LoraStore:
    root: Path

    def find(self, names: tuple[str, ...], field: str) -> Path:
        """The first of `names` present in the store, checked to be a safetensors file inside it."""
        root = self.root.resolve()
        for name in names:
            path = root / file_name(name, field)
            if not path.exists():
                continue
            real = path.resolve()
            if not real.is_relative_to(root) or not real.is_file():
                raise UnsafeLora(field, f"{field}: {name} does not resolve to a file inside the LoRA store")
            check_safetensors(real, field)
            return real
        raise LoraNotFound(field, tuple(file_name(n, field) for n in names))

    def by_id(self, lora_id: str, prefix: str | None) -> Path:
        return self.find(candidates(lora_id, prefix), "lora_id")

    def by_name(self, lora_name: str) -> Path:
        return self.find((file_name(lora_name),), "lora_name")


def check_safetensors(path: Path, field: str) -> None:
    """Parses only the header (safetensors' own reader, no pickle anywhere); refuses a file that is not one."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            if not list(f.keys()):
                raise UnsafeLora(field, f"{field}: {path.name} holds no tensors")
    except UnsafeLora:
        raise
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise UnsafeLora(field, f"{field}: {path.name} is not a valid safetensors file") from exc
