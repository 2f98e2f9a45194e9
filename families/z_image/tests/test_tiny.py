"""Tiny Z-Image-Turbo: the real diffusers layout and configs, loaded and run by the stock `ZImagePipeline` at the
model card's 8 steps without guidance; its tokenizer renders prompts as Qwen3's does. (Reproducible builds:
tests/contract/test_checkpoints.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline

from families.z_image import tiny


@pytest.fixture()
def checkpoint(z_image_checkpoint: Path) -> Path:
    return z_image_checkpoint


def test_the_real_layout(checkpoint: Path) -> None:
    index = json.loads((checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "ZImagePipeline"
    assert {k: v for k, v in index.items() if not k.startswith("_")} == {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "ZImageTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    scheduler = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["shift"] == 3.0 and scheduler["use_dynamic_shifting"] is False
    transformer = json.loads((checkpoint / "transformer" / "config.json").read_text())
    text = json.loads((checkpoint / "text_encoder" / "config.json").read_text())
    assert transformer["cap_feat_dim"] == text["hidden_size"]  # caption features are the text encoder's states
    head_dim = transformer["dim"] // transformer["n_heads"]
    assert sum(transformer["axes_dims"]) == head_dim
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (checkpoint / "tokenizer" / name).is_file(), name


def test_prompts_render_as_qwen3_renders_them(checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
    messages = [{"role": "user", "content": "a red fox"}]
    thinking = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert thinking == "<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n"
    plain = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert plain == thinking + "<think>\n\n</think>\n\n"
    # Qwen3's added tokens are single tokens; the text between them is BPE-split.
    ids = tok(thinking).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and len(tok.convert_ids_to_tokens(ids)) < 20
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in tiny.QWEN3_OTHER_ADDED_TOKENS)


def _generate(pipe: ZImagePipeline, seed: int) -> np.ndarray:
    out = pipe(
        prompt="a red fox in fresh snow",
        height=256,
        width=256,
        num_inference_steps=8,
        guidance_scale=0.0,  # Turbo: guidance off, as the model card runs it
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.images[0]


def test_the_stock_pipeline_runs_it_deterministically(checkpoint: Path) -> None:
    pipe = ZImagePipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    first, again, other = _generate(pipe, 1), _generate(pipe, 1), _generate(pipe, 2)
    assert first.shape == (256, 256, 3) and np.isfinite(first).all()
    assert (first * 255).std() > 1.0  # not a blank image
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
