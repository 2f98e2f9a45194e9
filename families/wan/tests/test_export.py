"""The Wan VAE exported in steps (adapters.py) decodes, and encodes, clips of any 4k+1 frames and size: the exported
graphs in ONNX Runtime, looped over the frames by the served proxy, equal AutoencoderKLWan.decode / encode on the
whole clip at two frame counts and two sizes, none of them a traced shape (and a one-frame reference image)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from diffusers import AutoencoderKLWan

from checkpoints.source import resolve
from model_repository.proxies import proxies_for
from registry import FAMILIES


class OnnxRuntimeClient:
    """The exported component graphs run here in ONNX Runtime, as the CPU profile's component models run them."""

    def __init__(self, onnx_dir: Path) -> None:
        self.onnx_dir = onnx_dir
        self.sessions: dict[str, ort.InferenceSession] = {}

    def infer(self, model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> dict[str, torch.Tensor]:
        if model not in self.sessions:
            path = str(self.onnx_dir / model / "model.onnx")
            self.sessions[model] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = self.sessions[model].run(outputs, {k: v.numpy() for k, v in inputs.items()})
        return {name: torch.from_numpy(value) for name, value in zip(outputs, got, strict=True)}


def served_and_stock_vae(key: str, stack_dirs) -> tuple[torch.nn.Module, AutoencoderKLWan]:  # noqa: ANN001
    """The served VAE proxy of the checkpoint over its exported graphs, and the stock module of the same weights."""
    checkpoint = resolve(key, "tiny", stack_dirs.checkpoints).path
    components = FAMILIES["wan"].components_for(key)
    vae = proxies_for("wan", components, checkpoint, OnnxRuntimeClient(stack_dirs.onnx))["vae"]
    return vae, AutoencoderKLWan.from_pretrained(checkpoint / "vae").eval()


@pytest.mark.parametrize(("frames", "height", "width"), [(5, 256, 256), (13, 160, 208)])
def test_exported_decoder_steps_equal_the_stock_decode(model_repository, stack_dirs, frames, height, width) -> None:
    vae, stock = served_and_stock_vae("wan2.2-t2v-a14b", stack_dirs)
    torch.manual_seed(frames)
    latent = torch.randn(1, stock.config.z_dim, (frames - 1) // 4 + 1, height // 8, width // 8)
    with torch.no_grad():
        expected = stock.decode(latent, return_dict=False)[0]
    (got,) = vae.decode(latent)
    assert got.shape == expected.shape == (1, 3, frames, height, width)
    assert (got - expected).abs().max() < 1e-4  # float noise: 2/255 of the [-1, 1] range is 1.6e-2


@pytest.mark.parametrize(("frames", "height", "width"), [(1, 128, 96), (5, 96, 128), (13, 160, 112)])
def test_exported_encoder_steps_equal_the_stock_encode(model_repository, stack_dirs, frames, height, width) -> None:
    """VACE's encoder: a reference image (one frame) and clips of two lengths, at sizes that are no traced shape."""
    vae, stock = served_and_stock_vae("wan2.1-vace-14b", stack_dirs)
    torch.manual_seed(frames)
    clip = torch.rand(1, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        expected = stock.encode(clip).latent_dist.parameters
    got = vae.encode(clip).latent_dist.parameters
    assert got.shape == expected.shape == (1, 2 * stock.config.z_dim, (frames - 1) // 4 + 1, height // 8, width // 8)
    assert (got - expected).abs().max() < 1e-4
