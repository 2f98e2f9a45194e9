"""Z-Image's transformer without lists or complex numbers (families/z_image/adapters.py): in torch it computes what
the stock forward computes; exported with dynamic image and caption lengths, ONNX Runtime matches the stock forward
at two resolutions (one whose image tokens need padding) and two caption lengths, and TensorRT's parser and
builder take the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from diffusers import ZImageTransformer2DModel

from export import graph_cleanup
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
def exported(model: ZImageTransformer2DModel, z_image_checkpoint: Path, tmp_path_factory) -> Path:
    core = ZImageCore(ZImageTransformer2DModel.from_pretrained(z_image_checkpoint / "transformer")).eval()
    inputs = core_inputs(model, *_item(model, LATENTS[0], CAPTIONS[1], seed=2))
    image = 32 * torch.export.Dim("image_blocks", min=1, max=512)  # up to 16,384 image tokens (2048² at 16 px)
    caption = 32 * torch.export.Dim("caption_blocks", min=1, max=16)  # up to 512 caption tokens
    dynamic = {
        "image_tokens": {1: image},
        "image_pad": {1: image},
        "caption": {1: caption},
        "caption_pad": {1: caption},
        "timestep": None,
        "image_rope": {0: image},
        "caption_rope": {0: caption},
    }
    path = tmp_path_factory.mktemp("z-image-onnx") / "model.onnx"
    with torch.no_grad():
        program = torch.onnx.export(
            core,
            tuple(inputs[name] for name in INPUTS),
            input_names=list(INPUTS),
            output_names=["sample"],
            dynamic_shapes=dynamic,
            dynamo=True,
            opset_version=18,
            optimize=False,  # keeps the torch parameter names (LoRA refit)
        )
    program.save(str(path))
    graph = onnx.load(str(path))
    graph_cleanup.clean(graph)
    onnx.save(graph, str(path))
    return path


@pytest.mark.parametrize(("latent_hw", "caption_tokens"), CASES)
def test_onnx_runtime_matches_the_stock_forward(model, exported: Path, latent_hw, caption_tokens) -> None:
    import onnxruntime as ort

    latent, caption, t = _item(model, latent_hw, caption_tokens, seed=3)
    expected = _stock(model, latent, caption, t)
    inputs = core_inputs(model, latent, caption, t)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (tokens,) = session.run(None, {name: inputs[name].numpy() for name in INPUTS})
    got = core_sample(model, torch.from_numpy(tokens), inputs["size"])
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4


def test_tensorrt_parses_and_builds_it(exported: Path, tmp_path: Path) -> None:
    """TensorRT for RTX (the CPU install's builder) takes the exported graph with a min/opt/max profile over both
    dynamic lengths."""
    from export import tensorrt_build as tb
    from export.tensorrt_flavours import load

    graph = onnx.load(str(exported), load_external_data=False).graph
    fixed = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}

    def shape(name: str, image: int, caption: int) -> tuple[int, ...]:
        dims = fixed[name]
        if name.startswith("image"):
            return (1, image, *dims[2:]) if name != "image_rope" else (image, *dims[1:])
        if name.startswith("caption"):
            return (1, caption, *dims[2:]) if name != "caption_rope" else (caption, *dims[1:])
        return tuple(dims)

    profiles = {n: tuple(shape(n, i, c) for i, c in ((32, 32), (4096, 512), (16384, 512))) for n in INPUTS}
    record = tb.build_engine(
        exported,
        tmp_path / "z_image.plan",
        profiles,
        precision="fp32",
        timing_cache_path=tmp_path / "timing.cache",
        compute_capability="8.9",
        tensorrt=load("trtrtx"),
        log=lambda _: None,
    )
    assert record["bytes"] > 0 and record["network"]["matrix_multiplies"] > 0
    assert np.isfinite(record["seconds"])
