"""export/ for Qwen-Image: the real-arithmetic rope equals diffusers' complex one, the tensor-only transformer
equals the stock forward, the transformer and the one-frame VAE export with dynamic size and text length and match
torch in ONNX Runtime, and a LoRA merges into plain weights under the base's names."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
from safetensors.torch import load_file, save_file

from checkpoints import resolve
from components.lora_merge import merge_lora
from export.onnx_export import PARITY_LIMIT, max_errors
from families.qwen_image.adapters import ADAPTERS, PARITY_SHAPES, qwen_img_shapes, qwen_shape
from families.qwen_image.rope import QwenRope, modulate_index_of
from registry import Component, TensorSpec, component_of

TINY_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 16,
    "axes_dims_rope": (4, 6, 6),
}
# The real VAE's layout (factor 8, two temporal stages), narrow channels.
TINY_VAE = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.0] * 4,
    "latents_std": [1.0] * 4,
}
# Shaped like the pipelines' img_shapes: text-to-image (square, non-square), edit (target + condition images of
# other sizes, odd grids).
IMG_SHAPES = [
    [[(1, 8, 8)]] * 2,
    [[(1, 6, 10)]],
    [[(1, 5, 7), (1, 4, 9)]] * 2,
    [[(1, 8, 6), (1, 3, 3), (1, 8, 6)]],
]


VAE_DECODER = Component(
    triton_model="qwen_image_vae_decoder",
    role="vae",
    subfolder="vae",
    exporter="qwen_vae_decoder",
    checkpoints=("tiny-qwen",),
    inputs=(TensorSpec("latent", "FP32", ("batch", -1, 1, "latent_height", "latent_width")),),
    outputs=(TensorSpec("sample", "FP32", ("batch", 3, 1, "height", "width")),),
)
VAE_ENCODER = Component(
    triton_model="qwen_image_vae_encoder",
    role="vae.encoder",
    subfolder="vae",
    exporter="qwen_vae_encoder",
    checkpoints=("tiny-qwen",),
    inputs=(TensorSpec("sample", "FP32", ("batch", 3, 1, "height", "width")),),
    outputs=(TensorSpec("moments", "FP32", ("batch", -1, 1, "latent_height", "latent_width")),),
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-qwen")
    torch.manual_seed(0)
    dirs = {}
    for name, zero_cond_t in (("transformer", False), ("transformer_edit", True)):
        QwenImageTransformer2DModel(**TINY_TRANSFORMER, zero_cond_t=zero_cond_t).save_pretrained(root / name)
        dirs[name] = root / name
    AutoencoderKLQwenImage(**TINY_VAE).save_pretrained(root / "vae")
    dirs["vae"] = root / "vae"
    return dirs


def _stock_inputs(img_shapes: list, text_tokens: int, batch: int) -> dict[str, torch.Tensor]:
    image_tokens = sum(f * h * w for f, h, w in img_shapes[0])
    mask = torch.ones(batch, text_tokens, dtype=torch.int64)
    mask[1:, text_tokens // 2 :] = 0  # shorter prompts padded, as the pipeline pads to the longest
    return {
        "hidden_states": torch.randn(batch, image_tokens, TINY_TRANSFORMER["in_channels"]),
        "encoder_hidden_states": torch.randn(batch, text_tokens, TINY_TRANSFORMER["joint_attention_dim"]),
        "encoder_hidden_states_mask": mask,
        "timestep": torch.rand(batch),
    }


@pytest.mark.parametrize("use_layer3d_rope", [False, True])
def test_real_rope_equals_diffusers_complex_rope(use_layer3d_rope: bool) -> None:
    # The real model's rope dims (head dim 128), so the tables reach real resolutions' positions.
    config = {**TINY_TRANSFORMER, "num_layers": 1, "axes_dims_rope": (16, 56, 56), "use_layer3d_rope": use_layer3d_rope}
    stock = QwenImageTransformer2DModel(**config)
    rope = QwenRope.from_config(stock.config)
    for img_shapes in [*IMG_SHAPES, [[(1, 83, 83)]], [[(1, 64, 104)]]]:  # also 1328² and 1024x1664 grids
        for text_tokens in (1, 34, 512):
            vid, txt = stock.pos_embed(img_shapes, max_txt_seq_len=text_tokens, device=torch.device("cpu"))
            image_rope, text_rope = rope(img_shapes, text_tokens)
            assert image_rope.shape == (vid.shape[0], 64, 2) and text_rope.shape == (text_tokens, 64, 2)
            got = torch.complex(image_rope[..., 0], image_rope[..., 1])
            assert (got - vid).abs().max() <= 1e-5, (img_shapes, text_tokens)
            got = torch.complex(text_rope[..., 0], text_rope[..., 1])
            assert (got - txt).abs().max() <= 1e-5, (img_shapes, text_tokens)
    # The same call is a cache hit: the serving proxy calls it every denoising step.
    assert rope(IMG_SHAPES[0], 34)[0] is rope(IMG_SHAPES[0], 34)[0]


def test_modulate_index_is_the_stock_one() -> None:
    img_shapes = [[(1, 2, 3), (1, 1, 2), (1, 2, 2)]] * 2
    expected = [[0] * 6 + [1] * 6] * 2
    assert modulate_index_of(img_shapes).tolist() == expected
    assert modulate_index_of(img_shapes).dtype == torch.int64


@pytest.mark.parametrize("name", ["transformer", "transformer_edit"])
def test_tensor_only_transformer_equals_stock_forward(name: str, tiny_dirs: dict[str, Path]) -> None:
    stock = QwenImageTransformer2DModel.from_pretrained(tiny_dirs[name]).eval()
    wrapped = ADAPTERS["qwen_transformer"].load(tiny_dirs[name]).eval()
    zero_cond_t = stock.config.zero_cond_t
    rope = QwenRope.from_config(stock.config)
    torch.manual_seed(3)
    for img_shapes, text_tokens in zip(IMG_SHAPES, (7, 19, 12, 5), strict=True):
        batch = len(img_shapes)
        inputs = _stock_inputs(img_shapes, text_tokens, batch)
        with torch.no_grad():
            expected = stock(**inputs, img_shapes=img_shapes, return_dict=False)[0]
            extra = (modulate_index_of(img_shapes),) if zero_cond_t else ()
            got = wrapped(*inputs.values(), *rope(img_shapes, text_tokens), *extra)
        assert got.shape == expected.shape
        assert (got - expected).abs().max() <= 1e-5, (name, img_shapes)
    if zero_cond_t:  # the index matters: the condition tokens are modulated with the zero timestep
        inputs = _stock_inputs(IMG_SHAPES[2], 12, 2)
        index = modulate_index_of(IMG_SHAPES[2])
        with torch.no_grad():
            wrong = wrapped(*inputs.values(), *rope(IMG_SHAPES[2], 12), torch.zeros_like(index))
            right = wrapped(*inputs.values(), *rope(IMG_SHAPES[2], 12), index)
        assert (wrong - right).abs().max() > 1e-3


def _graph_dims(path: Path) -> dict[str, list[int | str]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}


@pytest.mark.parametrize("triton_model", ["qwen_image_transformer", "qwen_edit_transformer"])
def test_served_transformer_exports_hold_at_other_sizes_and_text_lengths(
    triton_model: str, model_repository, stack_dirs
) -> None:
    """The served exports (the test stack's) beyond the contract's two shapes: a third batch, size and text length
    (edit: condition images), torch parameter names kept as initializers, and only dead weights missing."""
    family, component = component_of(triton_model)
    zero_cond_t = family.name == "qwen-image-edit"
    cond = int(zero_cond_t)  # edit: the target's tokens, then one (or two) condition images'
    traced, other = PARITY_SHAPES[family.name]
    shapes = [traced, other, qwen_shape(3, 192, 320, 300, cond)]
    path = stack_dirs.onnx / triton_model / "model.onnx"
    adapter = ADAPTERS[component.exporter]
    folder = resolve(component.checkpoints[0], "tiny", stack_dirs.checkpoints).path / component.subfolder
    module = adapter.load(folder).eval()
    rows = max_errors(component, module, adapter, path, shapes)
    for row in rows:
        assert all(err <= PARITY_LIMIT for err in row["max_abs_error"].values()), row
    assert {r["shape"]["text_tokens"] for r in rows} == {128, 77, 300}
    dims = _graph_dims(path)
    for spec in component.inputs:
        named = [d for d in spec.dims if isinstance(d, str)]
        assert [d for d in dims[spec.name] if isinstance(d, str)] == named, (spec.name, dims[spec.name])
    # Initializers keep the torch parameter names, prefixed "model." (LoRA refit matches them by name).
    initializers = {i.name for i in onnx.load(str(path), load_external_data=False).graph.initializer}
    parameters = {n for n, _ in module.named_parameters()}  # "model.<name>": the wrapper holds the model at .model
    assert initializers <= parameters
    # Only weights that cannot reach the output are gone: the last block's text stream after its attention.
    last = f"model.transformer_blocks.{module.model.config.num_layers - 1}."
    dead = {
        f"{last}{m}.{p}" for m in ("attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2") for p in ("weight", "bias")
    }
    assert parameters - initializers == dead
    assert [len(qwen_img_shapes(s)[0]) for s in shapes] == ([2, 3, 2] if zero_cond_t else [1, 1, 1])


@pytest.mark.parametrize("component", [VAE_DECODER, VAE_ENCODER], ids=lambda c: c.exporter)
def test_vae_wrappers_give_what_the_pipeline_reads(component: Component, tiny_dirs: dict[str, Path]) -> None:
    """(Their exports against torch at two resolutions: tests/contract/test_components.py.)"""
    vae = AutoencoderKLQwenImage.from_pretrained(tiny_dirs["vae"]).eval()
    module = ADAPTERS[component.exporter].load(tiny_dirs["vae"]).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        if component is VAE_DECODER:
            latent = torch.randn(1, 4, 1, 6, 10)
            assert torch.equal(module(latent), vae.decode(latent, return_dict=False)[0])
        else:
            image = torch.rand(1, 3, 1, 48, 80) * 2 - 1
            moments = module(image)
            assert torch.equal(moments, vae.encode(image).latent_dist.parameters)
            assert moments.shape == (1, 8, 1, 6, 10)


def _random_lora(model: torch.nn.Module, path: Path, rank: int = 4) -> None:
    """A LoRA in diffusers' own PEFT layout ("transformer.<module>.lora_A/B.weight"), random A and B."""
    targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "img_mlp.net.2"]
    tensors = {}
    for index in range(len(model.transformer_blocks)):
        for target in targets:
            linear = model.get_submodule(f"transformer_blocks.{index}.{target}")
            key = f"transformer.transformer_blocks.{index}.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, linear.in_features) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn(linear.out_features, rank) * 0.1
    save_file(tensors, str(path))


def test_lora_merge_equals_the_unfused_lora(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = QwenImageTransformer2DModel.from_pretrained(tiny_dirs["transformer"]).eval()
    lora_file = tmp_path / "lora.safetensors"
    _random_lora(base, lora_file)
    scale = 0.7

    merged = merge_lora(copy.deepcopy(base), lora_file, "QwenImagePipeline", scale=scale)
    unfused = copy.deepcopy(base)
    unfused.load_lora_adapter(QwenImagePipeline.lora_state_dict(str(lora_file)), prefix="transformer", adapter_name="l")
    unfused.set_adapters(["l"], weights=[scale])

    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert [n for n, _ in merged.named_parameters()] == [n for n, _ in base.named_parameters()]
    # The merge is W + scale * B @ A (no alpha in the file: diffusers takes alpha = rank).
    lora = load_file(str(lora_file))
    key = "transformer.transformer_blocks.1.attn.to_q"
    delta = scale * lora[f"{key}.lora_B.weight"] @ lora[f"{key}.lora_A.weight"]
    w = merged.transformer_blocks[1].attn.to_q.weight
    assert torch.allclose(w, base.transformer_blocks[1].attn.to_q.weight + delta, atol=1e-6)

    torch.manual_seed(4)
    img_shapes = IMG_SHAPES[0]
    inputs = _stock_inputs(img_shapes, 9, 2)
    with torch.no_grad():
        out_merged, out_unfused, out_base = (
            m(**inputs, img_shapes=img_shapes, return_dict=False)[0] for m in (merged, unfused, base)
        )
    assert (out_merged - out_unfused).abs().max() <= 1e-5
    assert (out_merged - out_base).abs().max() > 1e-2


def test_lora_that_matches_nothing_is_refused(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    base = QwenImageTransformer2DModel.from_pretrained(tiny_dirs["transformer"]).eval()
    lora_file = tmp_path / "lora.safetensors"
    save_file(
        {
            "transformer.no_such_block.lora_A.weight": torch.randn(4, 16),
            "transformer.no_such_block.lora_B.weight": torch.randn(16, 4),
        },
        str(lora_file),
    )
    with pytest.raises(ValueError, match="no_such_block"):
        merge_lora(base, lora_file, "QwenImagePipeline")
