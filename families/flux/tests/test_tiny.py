"""Tiny FLUX.1 checkpoints: the real module classes and configs, loadable and deterministic in the stock
FluxPipeline, sharing what the real FLUX.1 repos share, with tokenizers that round-trip. (Layout, reproducible builds
and shared subfolders of every checkpoint: tests/contract/test_checkpoints.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from diffusers import FluxPipeline

from artifacts import folder_hash
from registry import CHECKPOINTS, checkpoints_of

FLUX_KEYS = [c.key for c in checkpoints_of("flux")]
SHARED = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
SUBFOLDERS = (*SHARED, "transformer", "scheduler")


@pytest.fixture(scope="module")
def dev_pipe(tiny_checkpoint_dirs: dict[str, Path]) -> FluxPipeline:
    return FluxPipeline.from_pretrained(tiny_checkpoint_dirs["flux-dev"])


@pytest.mark.parametrize("key", FLUX_KEYS)
def test_layout_is_the_diffusers_one(tiny_checkpoint_dirs: dict[str, Path], key: str) -> None:
    path = tiny_checkpoint_dirs[key]
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    for sub in SUBFOLDERS:
        assert (path / sub).is_dir(), sub
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        assert list((path / sub).glob("*.safetensors")) and (path / sub / "config.json").is_file(), sub
    # The tokenizer files of the real repos, not only transformers 5's tokenizer.json.
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {f.name for f in (path / "tokenizer").iterdir()}
    assert {"spiece.model", "tokenizer.json"} <= {f.name for f in (path / "tokenizer_2").iterdir()}
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 3_000_000


@pytest.mark.parametrize("key", FLUX_KEYS)
def test_stock_pipeline_runs_and_is_deterministic(tiny_checkpoint_dirs: dict[str, Path], key: str) -> None:
    pipe = FluxPipeline.from_pretrained(tiny_checkpoint_dirs[key])
    pipe.set_progress_bar_config(disable=True)
    max_len = CHECKPOINTS[key].max_sequence_length

    def run(seed: int) -> np.ndarray:
        out = pipe(
            "a red fox on a snowy cliff",
            height=256,
            width=256,
            num_inference_steps=2,
            max_sequence_length=max_len,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        )
        return out.images

    first = run(0)
    assert first.shape == (1, 256, 256, 3)
    assert np.isfinite(first).all()
    assert np.array_equal(first, run(0))
    assert not np.array_equal(first, run(1))


@pytest.mark.parametrize("key", FLUX_KEYS)
def test_configs_behave_like_the_real_ones(tiny_checkpoint_dirs: dict[str, Path], key: str) -> None:
    pipe = FluxPipeline.from_pretrained(tiny_checkpoint_dirs[key], text_encoder=None, text_encoder_2=None)
    dev = key == "flux-dev"
    assert pipe.vae_scale_factor == 8  # four VAE levels, as in FLUX.1
    assert pipe.vae.config.latent_channels == 16 and pipe.transformer.config.in_channels == 64
    assert pipe.vae.config.scaling_factor == 0.3611 and pipe.vae.config.shift_factor == 0.1159
    t = pipe.transformer.config
    assert sum(t.axes_dims_rope) == t.attention_head_dim
    assert t.guidance_embeds is dev
    s = pipe.scheduler.config
    assert (s.shift, s.use_dynamic_shifting) == ((3.0, True) if dev else (1.0, False))
    assert (s.base_shift, s.max_shift, s.base_image_seq_len, s.max_image_seq_len) == (0.5, 1.15, 256, 4096)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer_2.model_max_length >= max(c.max_sequence_length for c in checkpoints_of("flux"))


def test_shared_modules_are_byte_identical(tiny_checkpoint_dirs: dict[str, Path]) -> None:
    dev, schnell = tiny_checkpoint_dirs["flux-dev"], tiny_checkpoint_dirs["flux-schnell"]
    for sub in SHARED:
        assert folder_hash(dev / sub) == folder_hash(schnell / sub), sub
    assert folder_hash(dev / "transformer") != folder_hash(schnell / "transformer")
    assert folder_hash(dev / "scheduler") != folder_hash(schnell / "scheduler")


def test_tokenizers_round_trip(dev_pipe: FluxPipeline, tiny_checkpoint_dirs: dict[str, Path]) -> None:
    clip, t5 = dev_pipe.tokenizer, dev_pipe.tokenizer_2
    text = "a red fox on a snowy cliff at sunset"
    ids = clip(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == clip.bos_token_id
    assert ids[len(text.split()) + 1] == clip.eos_token_id  # one token per corpus word, then the end
    assert clip.decode(ids, skip_special_tokens=True) == text
    assert clip.decode(clip("A Red FOX").input_ids, skip_special_tokens=True) == "a red fox"  # CLIP lower-cases

    mixed = "A red fox, 2 cats and a DRAGON on a snowy cliff!"
    t5_ids = t5(mixed).input_ids
    assert t5_ids[-1] == t5.eos_token_id and t5.unk_token_id not in t5_ids
    assert t5.decode(t5_ids, skip_special_tokens=True) == mixed
    # tokenizer.json and spiece.model are the same tokenizer.
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint_dirs["flux-dev"] / "tokenizer_2" / "spiece.model"))
    assert t5_ids == [*sp.encode(mixed), t5.eos_token_id]
    # FLUX-dev pads and truncates T5 to 512 tokens.
    long = t5(" ".join([text] * 200), padding="max_length", max_length=512, truncation=True).input_ids
    assert len(long) == 512 and long[-1] == t5.eos_token_id
    assert t5("a", padding="max_length", max_length=512).input_ids[2:] == [t5.pad_token_id] * 510
