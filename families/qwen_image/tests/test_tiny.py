"""Tiny Qwen-Image checkpoints: the real diffusers layouts and configs, a tokenizer whose template prefixes are
exactly what the pipelines drop, and the Lightning LoRA in the real key layout. (Reproducible builds of every
checkpoint, and the stock edit and inpaint pipelines running on them as each route's reference: tests/contract/.)"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    QwenImageControlNetInpaintPipeline,
    QwenImageControlNetPipeline,
    QwenImageEditInpaintPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImageLayeredPipeline,
    QwenImagePipeline,
)
from PIL import Image
from safetensors import safe_open

from checkpoints import build_tiny
from checkpoints.tiny import STAMP
from families.qwen_image import tiny as tiny_qwen
from families.qwen_image.reference import processor_override
from registry import CHECKPOINTS, ROUTES, family_of
from tests.fixtures import TEST_CHECKPOINTS

T2I, EDIT, LORA = "qwen-image-2512", "qwen-image-edit-2511", "qwen-image-lightning"
SHARED = ("text_encoder", "tokenizer", "vae")
PROMPT = "a red fox on a snowy cliff"
# The (non-modular) diffusers pipelines that drop a fixed template prefix; all use one of two system prompts.
TEMPLATE_PIPELINES = (
    QwenImagePipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImageControlNetPipeline,
    QwenImageControlNetInpaintPipeline,
    QwenImageLayeredPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageEditInpaintPipeline,
)


@pytest.fixture(scope="module")
def dirs() -> dict[str, Path]:
    return {name: build_tiny(name, TEST_CHECKPOINTS) for name in (T2I, EDIT, LORA)}


@pytest.fixture(scope="module")
def t2i(dirs: dict[str, Path]) -> QwenImagePipeline:
    pipe = QwenImagePipeline.from_pretrained(dirs[T2I])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _edit(cls: type, path: Path) -> QwenImageEditPlusPipeline | QwenImageEditInpaintPipeline:
    pipe = cls.from_pretrained(path, **processor_override(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images() -> tuple[Image.Image, Image.Image, Image.Image]:
    """A source image, a reference image of another aspect, and a mask whose white square is repainted."""
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    reference = Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((128, 128), 255, np.uint8), 64))
    return source, reference, mask


def _blank(cls: type) -> object:
    """A pipeline with no modules: enough to read its prompt template and start index."""
    return cls(**{name: None for name in cls._get_signature_keys(cls)[0]})


def _deterministic(run: Callable[[int], np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    first = run(0)
    assert first.shape == shape
    assert np.isfinite(first).all()
    assert np.array_equal(first, run(0))
    assert not np.array_equal(first, run(1))
    return first


@pytest.mark.parametrize(("name", "cls"), [(T2I, "QwenImagePipeline"), (EDIT, "QwenImageEditPlusPipeline")])
def test_layout_is_the_diffusers_one(dirs: dict[str, Path], name: str, cls: str) -> None:
    path = dirs[name]
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == cls
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert index["transformer"] == ["diffusers", "QwenImageTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index.get("processor") == (["transformers", "Qwen2VLProcessor"] if name == EDIT else None)
    for sub in ("transformer", "vae", "text_encoder"):
        assert list((path / sub).glob("*.safetensors")) and (path / sub / "config.json").is_file(), sub
    tokenizer_files = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"}
    assert tokenizer_files <= {f.name for f in (path / "tokenizer").iterdir()}
    if name == EDIT:
        processor_files = tokenizer_files | {"preprocessor_config.json", "video_preprocessor_config.json"}
        assert processor_files <= {f.name for f in (path / "processor").iterdir()}
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 3_000_000


def test_configs_behave_like_the_real_ones(dirs: dict[str, Path], t2i: QwenImagePipeline) -> None:
    edit = QwenImageEditPlusPipeline.from_pretrained(dirs[EDIT], text_encoder=None, processor=None)
    for pipe in (t2i, edit):
        assert pipe.vae_scale_factor == 8  # three temporal-downsample flags, as the real VAE
        v, t = pipe.vae.config, pipe.transformer.config
        assert v.z_dim == 16 and t.in_channels == 64 and t.out_channels == 16 and t.patch_size == 2
        assert v.latents_mean == tiny_qwen.LATENTS_MEAN and v.latents_std == tiny_qwen.LATENTS_STD
        assert sum(t.axes_dims_rope) == t.attention_head_dim
        assert t.joint_attention_dim == t2i.text_encoder.config.text_config.hidden_size
        s = pipe.scheduler.config
        assert (s.use_dynamic_shifting, s.time_shift_type, s.shift_terminal) == (True, "exponential", 0.02)
        assert (s.base_shift, s.max_shift, s.base_image_seq_len, s.max_image_seq_len) == (0.5, 0.9, 256, 8192)
    # Qwen-Image-Edit-2511's flag: reference images are modulated with timestep 0.
    assert edit.transformer.config.zero_cond_t and not t2i.transformer.config.zero_cond_t
    # The text encoder finds image placeholders and vision starts by the tokenizer's ids.
    tok, te = t2i.tokenizer, t2i.text_encoder.config
    assert te.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert te.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert te.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert te.text_config.vocab_size >= len(tok)


def test_shared_modules_are_byte_identical(dirs: dict[str, Path]) -> None:
    for sub in SHARED:
        assert _hashes(dirs[T2I] / sub) == _hashes(dirs[EDIT] / sub), sub
    assert _hashes(dirs[T2I] / "transformer") != _hashes(dirs[EDIT] / "transformer")


@pytest.mark.parametrize("cls", TEMPLATE_PIPELINES, ids=lambda c: c.__name__)
def test_template_prefix_is_exactly_what_the_pipeline_drops(t2i: QwenImagePipeline, cls: type) -> None:
    """The pipelines drop `prompt_template_encode_start_idx` leading hidden states; with this tokenizer those are the
    whole system turn and the user turn's opening, as with the real one, so no code overrides the index."""
    pipe = _blank(cls)
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    prefix = tiny_qwen.template_prefix(template)
    tok = t2i.tokenizer
    assert len(tok(prefix).input_ids) == drop
    ids = tok(template.format(PROMPT)).input_ids
    assert tok.decode(ids[:drop]) == prefix
    # What is kept: the user's text (after the edit-inpaint template's image placeholder) and the assistant opening.
    assert tok.decode(ids[drop:]) == template[len(prefix) :].format(PROMPT)


@pytest.mark.parametrize("cls", [QwenImageEditPlusPipeline, QwenImageEditInpaintPipeline], ids=lambda c: c.__name__)
def test_template_prefix_holds_with_images(dirs: dict[str, Path], cls: type) -> None:
    """With images the processor expands each <|image_pad|> after the prefix, so the dropped count is unchanged."""
    processor = _edit(cls, dirs[EDIT]).processor
    pipe = _blank(cls)
    source, reference, _ = _images()
    images = [source, reference] if cls is QwenImageEditPlusPipeline else [source]
    pictures = "".join(f"Picture {i + 1}: <|vision_start|><|image_pad|><|vision_end|>" for i in range(len(images)))
    text = pipe.prompt_template_encode.format((pictures if cls is QwenImageEditPlusPipeline else "") + PROMPT)
    ids = processor(text=[text], images=images, return_tensors="pt").input_ids[0].tolist()
    drop = pipe.prompt_template_encode_start_idx
    tok = processor.tokenizer
    assert ids[:drop] == tok(tiny_qwen.template_prefix(pipe.prompt_template_encode)).input_ids
    kept = tok.decode(ids[drop:])
    assert kept.startswith("Picture 1: <|vision_start|>" if cls is QwenImageEditPlusPipeline else "<|vision_start|>")
    assert ids.count(tok.convert_tokens_to_ids("<|image_pad|>")) > 2 * len(images)  # expanded per image patch


def test_tokenizer_round_trips(t2i: QwenImagePipeline) -> None:
    tok = t2i.tokenizer
    text = "A red fox, 2 cats & a DRAGON: 東京の夜 ☃ — naïve café!"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text  # byte-level: any text, no unknown token
    assert len(tok("<|vision_start|><|image_pad|><|vision_end|>").input_ids) == 3
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith(f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n")


def test_text_to_image_runs_and_is_deterministic(t2i: QwenImagePipeline) -> None:
    def run(seed: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        return t2i(PROMPT, height=256, width=256, num_inference_steps=2, generator=generator, output_type="np").images

    _deterministic(run, (1, 256, 256, 3))


def test_lightning_lora_has_the_real_layout_loads_fuses_and_changes_the_output(
    dirs: dict[str, Path], t2i: QwenImagePipeline
) -> None:
    folder = dirs[LORA]
    assert [f.name for f in folder.iterdir() if f.name != STAMP] == [tiny_qwen.LIGHTNING_FILE]
    with safe_open(folder / tiny_qwen.LIGHTNING_FILE, "pt") as f:
        keys = set(f.keys())
        alpha = f.get_tensor("transformer_blocks.0.attn.to_q.alpha")
    key = re.compile(r"transformer_blocks\.(\d+)\.(.+)\.(lora_down\.weight|lora_up\.weight|alpha)")
    assert all(key.fullmatch(k) for k in keys)
    modules = {key.fullmatch(k).group(2) for k in keys}
    assert modules == set(tiny_qwen.LIGHTNING_MODULES)
    assert len(keys) == 3 * len(modules) * len(t2i.transformer.transformer_blocks)
    assert alpha.shape == () and alpha.item() == tiny_qwen.LIGHTNING_ALPHA

    converted = QwenImagePipeline.lora_state_dict(folder, weight_name=tiny_qwen.LIGHTNING_FILE)
    assert len(converted) == 2 * len(keys) // 3
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in converted)

    def run() -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        return t2i(PROMPT, height=256, width=256, num_inference_steps=4, generator=generator, output_type="np").images

    base = run()
    t2i.load_lora_weights(folder, weight_name=tiny_qwen.LIGHTNING_FILE, adapter_name="lightning")
    try:
        adapted = [m for m in t2i.transformer.modules() if "lightning" in getattr(m, "lora_A", {})]
        assert len(adapted) == len(modules) * len(t2i.transformer.transformer_blocks)  # every key found its layer
        t2i.fuse_lora()
        fused = run()
        t2i.unfuse_lora()
    finally:
        t2i.unload_lora_weights()
    assert np.isfinite(fused).all()
    assert np.abs(fused - base).mean() > 0.01  # visibly changed (in [0, 1] pixels)
    np.testing.assert_allclose(run(), base, atol=1e-4)  # unfused and unloaded: the base model again


def _hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the builder's stamp."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != STAMP
    }


QWEN_ROUTES = [p for p, r in ROUTES.items() if family_of(r.checkpoint).name in ("qwen-image", "qwen-image-edit")]


@pytest.mark.parametrize("path", QWEN_ROUTES)
def test_min_steps_is_the_fewest_the_routes_scheduler_runs(path: str) -> None:
    """The registry's min_steps against the checkpoint's own scheduler, set as the Qwen pipelines set it: one step
    fewer gives a non-finite schedule (then an all-black image), min_steps a finite one."""
    route = ROUTES[path]
    checkpoint = CHECKPOINTS[route.checkpoint]
    folder = build_tiny(checkpoint.tiny, TEST_CHECKPOINTS)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **dict(checkpoint.scheduler_overrides))

    def finite(steps: int) -> bool:
        scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), mu=1.0)
        return bool(torch.isfinite(scheduler.sigmas).all())

    assert finite(route.limits.min_steps)
    assert route.limits.min_steps == 1 or not finite(route.limits.min_steps - 1)
