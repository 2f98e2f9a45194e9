"""Adapters: each loads a diffusers/transformers module from its checkpoint subfolder and wraps it so its forward
takes exactly the registry's inputs of its component, in order, and returns its output the way the pipeline reads
it. The ones for modules several families share live here; each family folder's adapters.py adds its own.

The same wrappers are what ONNX sees and what the torch reference computes, so parity compares like with like.
The wrapped module sits at `self.model`: ONNX initializer names are the torch parameter names prefixed "model."
(recorded in the manifest for LoRA refit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

Shape = Mapping[str, int]  # symbolic dim name -> size
INITIALIZER_PREFIX = "model."


@dataclass(frozen=True)
class Adapter:
    load: Callable[[Path], torch.nn.Module]  # checkpoint subfolder -> wrapped module
    example: Callable[[torch.nn.Module, Shape], tuple[torch.Tensor, ...]]  # random inputs of one concrete shape


class Wrapped(torch.nn.Module):
    """An adapter's module: the diffusers/transformers module at `.model`, so ONNX initializer names are the torch
    parameter names prefixed INITIALIZER_PREFIX."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model


class ClipPooled(Wrapped):
    """CLIP text model -> pooler_output (the end-token state pipelines read as pooled_prompt_embeds)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False).pooler_output


class T5Hidden(Wrapped):
    """T5 encoder -> last hidden state (the prompt_embeds of pipelines that pass no attention mask)."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, output_hidden_states=False)[0]


class VaeDecoder(Wrapped):
    """Decodes a raw latent: the pipeline has already undone the VAE's scaling and shift before vae.decode."""

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latent, return_dict=False)[0]


def _clip(path: Path) -> torch.nn.Module:
    from transformers import CLIPTextModel

    return ClipPooled(CLIPTextModel.from_pretrained(path))


def _t5(path: Path) -> torch.nn.Module:
    from transformers import T5EncoderModel

    return T5Hidden(T5EncoderModel.from_pretrained(path))


def _vae(path: Path) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return VaeDecoder(AutoencoderKL.from_pretrained(path))


def _token_ids(batch: int, length: int, vocab: int, start: int | None, end: int, pad: int) -> torch.Tensor:
    """Rows like a tokenizer's padded output: [start] prompt tokens of varying length, end, padding."""
    specials = torch.tensor([end, pad, -1 if start is None else start])
    filler = next(i for i in range(vocab) if i not in specials)
    ids = torch.full((batch, length), pad, dtype=torch.int64)
    offset = 0 if start is None else 1
    for row in range(batch):
        body = torch.randint(0, vocab, (int(torch.randint(0, length - offset, ())),))
        body[torch.isin(body, specials)] = filler  # no special ids inside the prompt
        if start is not None:
            ids[row, 0] = start
        ids[row, offset : offset + len(body)] = body
        if offset + len(body) < length:
            ids[row, offset + len(body)] = end
    return ids


def _clip_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    # <|startoftext|> prompt <|endoftext|> then <|endoftext|> padding: the pooled state is taken at the first end.
    return (_token_ids(s["batch"], s["clip_tokens"], c.vocab_size, c.bos_token_id, c.eos_token_id, c.eos_token_id),)


def _t5_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    return (_token_ids(s["batch"], s["t5_tokens"], c.vocab_size, None, c.eos_token_id, c.pad_token_id),)


def _vae_example(module: torch.nn.Module, s: Shape) -> tuple[torch.Tensor, ...]:
    c = module.model.config
    return (torch.randn(s["batch"], c.latent_channels, s["latent_height"], s["latent_width"]),)


SHARED: dict[str, Adapter] = {
    "clip_text_encoder": Adapter(_clip, _clip_example),
    "t5_encoder": Adapter(_t5, _t5_example),
    "vae_decoder": Adapter(_vae, _vae_example),
}


def adapter_of(family: str, exporter: str) -> Adapter:
    """The adapter a component of `family` names (Component.exporter): a shared one, or its family folder's."""
    from families import hooks

    found = {**SHARED, **hooks(family, "adapters", "ADAPTERS")}
    if exporter not in found:
        raise KeyError(f"no adapter {exporter!r} for family {family}: known {sorted(found)}")
    return found[exporter]


def parity_shapes(family: str) -> tuple[Shape, Shape]:
    """The shape a family's components are traced at and a second one that differs in every dynamic dim, declared
    by its folder's adapters.py: parity at both proves an exported graph really is dynamic."""
    from families import hooks

    shapes = hooks(family, "adapters", "PARITY_SHAPES")
    if family not in shapes:
        raise KeyError(f"family {family}: its adapters.py declares no PARITY_SHAPES")
    return shapes[family]
