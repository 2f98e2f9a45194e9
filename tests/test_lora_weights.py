"""Per-request LoRAs merged into a component's weights, on each runtime, against diffusers and PEFT on the same tiny
checkpoint: the ONNX Runtime profile's merged model (model_repository/onnx_loras.py) changes exactly the adapted
initializers, by W + scale * B @ A read off the file itself; the torch GPU path's in-place merge
(components/lora_apply.py) on a fused-QKV module answers what diffusers' own adapters answer, and switching sets
returns bitwise the weights of each set and of the base; an FP8 linear's re-quantised rows equal a fresh
quantisation of the merged weight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers import FluxTransformer2DModel
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from checkpoints.source import resolve
from components.fp8 import Fp8Linear, quantize
from components.lora_apply import InPlaceLoras, base_copies
from components.lora_set import LoraFile, LoraMismatch, LoraSet
from components.lora_weights import LoraReader, sample_lora
from model_repository.onnx_loras import OnnxLoras

CHECKPOINT = "flux-dev"


@pytest.fixture(scope="module")
def transformer_dir(stack_dirs) -> Path:  # noqa: ANN001 - the session's BuildDirs
    return resolve(CHECKPOINT, "tiny", stack_dirs.checkpoints).path / "transformer"


@pytest.fixture(scope="module")
def lora_files(transformer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("loras")
    return {
        "a": sample_lora(transformer_dir, out / "a.safetensors", seed=1),
        "b": sample_lora(transformer_dir, out / "b.safetensors", rank=2, seed=2),
    }


def lora_set(*files: tuple[Path, float]) -> LoraSet:
    return LoraSet(tuple(LoraFile(str(p), f"file:{p.name}", s, p.stem) for p, s in files))


def _adapted(path: Path) -> set[str]:
    """The modules a diffusers-format LoRA file adapts, read off its keys."""
    return {k.removeprefix("transformer.").removesuffix(".lora_A.weight") for k in load_file(path) if "lora_A" in k}


def test_the_onnx_merge_changes_the_adapted_initializers_and_no_others(model_repository, stack_dirs, lora_files):
    onnx_path = stack_dirs.onnx / "flux_dev_transformer" / "model.onnx"
    transformer_dir = stack_dirs.checkpoints / CHECKPOINT / "transformer"
    loras = OnnxLoras(onnx_path, transformer_dir, "FluxPipeline", lambda m: ort.InferenceSession(m))
    model_bytes, changed = loras.merged_model(lora_set((lora_files["a"], 0.75)))
    base = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    merged = {i.name: numpy_helper.to_array(i) for i in onnx.ModelProto.FromString(model_bytes).graph.initializer}
    assert merged.keys() == base.keys()
    differ = {name for name in base if not np.array_equal(base[name], merged[name])}
    expected = {f"model.{m}.weight" for m in _adapted(lora_files["a"])}
    assert differ == expected == set(changed) and len(differ) == 7  # 4 in the double block, q/k/v in the single
    # One of them by hand, from the file's factors: W + scale * (alpha / rank) * B @ A, no alpha stored: alpha = rank.
    tensors = load_file(lora_files["a"])
    name = "transformer_blocks.0.attn.to_k"
    down, up = tensors[f"transformer.{name}.lora_A.weight"], tensors[f"transformer.{name}.lora_B.weight"]
    by_hand = base[f"model.{name}.weight"] + 0.75 * (up @ down).numpy()
    np.testing.assert_allclose(merged[f"model.{name}.weight"], by_hand, rtol=0, atol=1e-6)


def test_an_onnx_session_per_set_leaves_the_base_session_alone(model_repository, stack_dirs, lora_files):
    onnx_path = stack_dirs.onnx / "flux_dev_transformer" / "model.onnx"
    transformer_dir = stack_dirs.checkpoints / CHECKPOINT / "transformer"
    loras = OnnxLoras(onnx_path, transformer_dir, "FluxPipeline", lambda m: ort.InferenceSession(m), cache_size=2)
    a, b = lora_set((lora_files["a"], 1.0)), lora_set((lora_files["b"], 1.0))
    assert loras.session(None) is loras.base and loras.session(lora_set()) is loras.base
    first_a = loras.session(a)
    assert loras.session(b) is not first_a and loras.session(a) is first_a  # the LRU keeps recent sets ready
    loras.session(lora_set((lora_files["a"], 0.5)))  # a third set evicts the least recently used (b)
    assert b.key not in loras.sessions and a.key in loras.sessions


def _inputs(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(1, 16, config["in_channels"], generator=g),
        "encoder_hidden_states": torch.randn(1, 8, config["joint_attention_dim"], generator=g),
        "pooled_projections": torch.randn(1, config["pooled_projection_dim"], generator=g),
        "timestep": torch.tensor([0.5]),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
        "guidance": torch.tensor([3.5]),
    }


def _with_diffusers_adapters(transformer_dir: Path, files: list[tuple[Path, float]]) -> FluxTransformer2DModel:
    from diffusers import FluxPipeline

    module = FluxTransformer2DModel.from_pretrained(transformer_dir).eval()
    names = []
    for i, (path, _) in enumerate(files):
        state_dict = FluxPipeline.lora_state_dict(str(path))
        module.load_lora_adapter(state_dict, prefix="transformer", adapter_name=f"r{i}")
        names.append(f"r{i}")
    module.set_adapters(names, [s for _, s in files])
    return module


def test_in_place_loras_on_fused_qkv_answer_what_diffusers_adapters_do(transformer_dir, lora_files) -> None:
    module = FluxTransformer2DModel.from_pretrained(transformer_dir).eval()
    base = base_copies(module)  # before the speed-ups, as the served component takes them
    module.fuse_qkv_projections()
    fused_base = {k: v.clone() for k, v in module.state_dict().items()}
    loras = InPlaceLoras(LoraReader(transformer_dir, "FluxPipeline"), base)
    loras.bind(module)
    inputs = _inputs(module.config)
    stacked = [(lora_files["a"], 0.8), (lora_files["b"], -1.3)]
    with torch.no_grad():
        loras.apply(lora_set(*stacked))
        ours = module(**inputs).sample
        theirs = _with_diffusers_adapters(transformer_dir, stacked)(**inputs).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - module.__class__.from_pretrained(transformer_dir)(**inputs).sample).abs().max() > 1e-2

    weights_a = {k: v.clone() for k, v in module.state_dict().items()}
    changed = {k for k in weights_a if not torch.equal(weights_a[k], fused_base[k])}
    # Fused: the double block's to_qkv and to_out.0, the single block's to_qkv (to_q/k/v stay, unused, as the base).
    assert changed == {
        "transformer_blocks.0.attn.to_qkv.weight",
        "transformer_blocks.0.attn.to_out.0.weight",
        "single_transformer_blocks.0.attn.to_qkv.weight",
    }
    loras.apply(lora_set((lora_files["b"], 1.0)))
    loras.apply(lora_set(*stacked))
    assert all(torch.equal(v, weights_a[k]) for k, v in module.state_dict().items())  # A -> B -> A: A exactly
    loras.apply(None)
    assert all(torch.equal(v, fused_base[k]) for k, v in module.state_dict().items())  # and the base exactly


def test_fp8_rows_requantised_in_place_equal_a_fresh_quantisation() -> None:
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(32, 48)
    fp8 = Fp8Linear(linear)
    buffers = (fp8.weight_fp8.data_ptr(), fp8.weight_scale.data_ptr())
    merged = linear.weight.detach() + 0.1 * torch.randn(48, 32, generator=g)
    fp8.set_rows(slice(16, 32), merged[16:32])
    weight_fp8, scale = quantize(merged[16:32])
    assert torch.equal(fp8.weight_fp8[16:32].float(), weight_fp8.float())
    assert torch.equal(fp8.weight_scale[:, 16:32], scale.t())
    untouched, _ = quantize(linear.weight.detach()[:16])
    assert torch.equal(fp8.weight_fp8[:16].float(), untouched.float())
    assert (fp8.weight_fp8.data_ptr(), fp8.weight_scale.data_ptr()) == buffers  # CUDA graphs read the same memory


def test_a_lora_matching_nothing_is_refused_naming_its_field(transformer_dir, tmp_path) -> None:
    reader = LoraReader(transformer_dir, "FluxPipeline")
    foreign = tmp_path / "foreign.safetensors"
    save_file(
        {
            "transformer.no_such_block.to_q.lora_A.weight": torch.zeros(4, 8),
            "transformer.no_such_block.to_q.lora_B.weight": torch.zeros(8, 4),
        },
        str(foreign),
    )
    file = LoraFile(str(foreign), "file:foreign", 1.0, "foreign", field="loras[1].name")
    with pytest.raises(LoraMismatch, match="match nothing") as refused:
        reader.read(file)
    assert refused.value.field == "loras[1].name"
    assert not any("lora" in n for n, _ in reader.skeleton.named_modules())  # nothing stays injected
