"""api.md's LoRA fields as a diffusers user applies them, written out by hand for the family references
(families/*/reference.py): each LoRA file loaded with `load_lora_weights` as its own adapter, `set_adapters` at the
requested strengths, the trigger word prepended to the prompt; unloaded again after the call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def store_of(checkpoints_root: Path) -> Path:
    """The LoRA store beside a build's checkpoints (stack.build.BuildDirs.under: <root>/checkpoints, <root>/loras)."""
    return Path(checkpoints_root).parent / "loras"


def files_of(body: Mapping[str, Any], store: Path, prefix: str | None) -> list[tuple[Path, float]]:
    """(file, strength) of each LoRA the request names, in its order; `prefix`: the family's lora_id prefix."""
    strength = float(body.get("lora_strength", 1.0))
    if body.get("lora_id") is not None:
        names = ([f"{prefix}-character-{body['lora_id']}"] if prefix else []) + [f"character-{body['lora_id']}"]
        first = next(store / f"{n}.safetensors" for n in names if (store / f"{n}.safetensors").exists())
    else:
        name = body["lora_name"]
        first = store / (name if name.endswith(".safetensors") else f"{name}.safetensors")
    out = [(first, strength)]
    for item in body.get("loras") or ():
        name = item["name"]
        out.append((store / (name if name.endswith(".safetensors") else f"{name}.safetensors"), item["scale"]))
    return out


def prompt_of(body: Mapping[str, Any], field: str = "prompt") -> str:
    trigger = (body.get("trigger_word") or "").strip()
    return f"{trigger} {body[field]}".strip() if trigger else body[field]


@contextlib.contextmanager
def adapters(pipe: Any, body: Mapping[str, Any], store: Path, prefix: str | None = None) -> Iterator[None]:
    """`pipe` with the request's LoRAs active at their strengths; nothing when the request names none."""
    if body.get("lora_id") is None and body.get("lora_name") is None:
        yield
        return
    files = files_of(body, store, prefix)
    names = [f"request_{i}" for i in range(len(files))]
    for name, (path, _) in zip(names, files, strict=True):
        pipe.load_lora_weights(str(path), adapter_name=name)
    try:
        pipe.set_adapters(names, [strength for _, strength in files])
        yield
    finally:
        pipe.unload_lora_weights()
