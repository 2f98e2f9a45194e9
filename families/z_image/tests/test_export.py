"""Z-Image's transformer without lists or complex numbers (families/z_image/adapters.py): in torch it computes what
the stock forward computes; exported by the stack with dynamic image and caption lengths, ONNX Runtime matches the
stock forward at two resolutions (one whose image tokens need padding) and two caption lengths. (TensorRT's parser
and builder take it: tests/test_tensorrt_plans.py builds every exported component.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from families.z_image.adapters import ZImageCore, core_inputs, core_sample

INPUTS = ("image_tokens", "image_pad", "caption", "caption_pad", "timestep", "image_rope", "caption_rope")
# (latent height, latent width): 16x16 = 256 image tokens (a multiple of 32), 12x20 = 240 (padded to 256).
LATENTS = [(32, 32), (24, 40)]
CAPTIONS = [7, 40]  # caption tokens: padded to 32 and 64


@pytest.fixture(scope="module")
def model(z_image_checkpoint: Path) -> ZImageTransformer2DModel:
    return ZImageTransformer2DModel.from_pretrained(z_image_checkpoint / "transformer").eval()


def _item(model: ZImageTransformer2DModel, latent_hw: tuple[int, int], caption_tokens: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(model.config.in_channels, 1, *latent_hw, generator=g)
    caption = torch.randn(caption_tokens, model.config.cap_feat_dim, generator=g)
    return latent, caption, torch.tensor([0.7])


def _stock(model: ZImageTransformer2DModel, latent: torch.Tensor, caption: torch.Tensor, t: torch.Tensor):
    with torch.no_grad():
        return model([latent], t, [caption], return_dict=False)[0][0]


CASES = [(hw, n) for hw in LATENTS for n in CAPTIONS]


@pytest.mark.parametrize(("latent_hw", "caption_tokens"), CASES)
def test_core_computes_what_the_stock_forward_computes(model, latent_hw, caption_tokens) -> None:
    latent, caption, t = _item(model, latent_hw, caption_tokens, seed=1)
    expected = _stock(model, latent, caption, t)
    core = ZImageCore(ZImageTransformer2DModel.from_config(model.config)).eval()
    core.model.load_state_dict(model.state_dict())
    inputs = core_inputs(model, latent, caption, t)
    with torch.no_grad():
        tokens = core(*(inputs[name] for name in INPUTS))
    got = core_sample(model, tokens, inputs["size"])
    assert got.shape == expected.shape == latent.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def exported(model_repository: Path, stack_dirs) -> Path:
    """The test stack's export of the transformer (export/family.py, with the registry's dynamic dims)."""
    return stack_dirs.onnx / "z_image_transformer" / "model.onnx"


@pytest.mark.parametrize(("latent_hw", "caption_tokens"), CASES)
def test_onnx_runtime_matches_the_stock_forward(model, exported: Path, latent_hw, caption_tokens) -> None:
    import onnxruntime as ort

    latent, caption, t = _item(model, latent_hw, caption_tokens, seed=3)
    expected = _stock(model, latent, caption, t)
    inputs = core_inputs(model, latent, caption, t)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    # served masks are INT64 (registry)
    feeds = {name: (inputs[name].long() if name.endswith("_pad") else inputs[name]).numpy() for name in INPUTS}
    (tokens,) = session.run(None, feeds)
    got = core_sample(model, torch.from_numpy(tokens), inputs["size"])
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4
