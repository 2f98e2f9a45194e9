"""Tiny checkpoints: the real diffusers layout, loadable by the stock pipeline, deterministic, and sharing what the
real FLUX.1 repos share."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from checkpoints import build_tiny, resolve
from export.manifest import content_hash
from registry import CHECKPOINTS
from stack.local import BuildDirs


@pytest.fixture(scope="module")
def flux_dirs(stack_dirs: BuildDirs) -> dict[str, Path]:
    return {k: resolve(k, "tiny", stack_dirs.checkpoints).path for k in ("flux-schnell", "flux-dev")}


def test_layout_is_the_diffusers_one(flux_dirs: dict[str, Path]) -> None:
    for path in flux_dirs.values():
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == "FluxPipeline"
        for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae", "scheduler"):
            assert (path / name).is_dir(), name
        assert list((path / "transformer").glob("*.safetensors"))


@pytest.mark.parametrize("key", ["flux-schnell", "flux-dev"])
def test_stock_pipeline_runs_and_is_deterministic(flux_dirs: dict[str, Path], key: str) -> None:
    pipe = FluxPipeline.from_pretrained(flux_dirs[key])
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int) -> np.ndarray:
        out = pipe("a fox", height=256, width=256, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
        return np.asarray(out.images[0])

    first = run(0)
    assert first.shape == (256, 256, 3)
    assert np.array_equal(first, run(0))
    assert not np.array_equal(first, run(1))
    assert pipe.vae_scale_factor == 8  # sizes behave as with the real 4-level VAE
    assert pipe.transformer.config.guidance_embeds is (key == "flux-dev")


def test_shared_modules_are_byte_identical(flux_dirs: dict[str, Path]) -> None:
    dev, schnell = flux_dirs["flux-dev"], flux_dirs["flux-schnell"]
    for shared in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae"):
        assert content_hash(dev / shared) == content_hash(schnell / shared), shared
    assert content_hash(dev / "transformer") != content_hash(schnell / "transformer")


def test_rebuild_gives_the_same_bytes(tmp_path: Path, flux_dirs: dict[str, Path]) -> None:
    rebuilt = build_tiny("flux-dev", tmp_path)
    for sub in ("transformer", "text_encoder", "tokenizer", "tokenizer_2", "vae"):
        assert content_hash(rebuilt / sub) == content_hash(flux_dirs["flux-dev"] / sub), sub


def test_tokenizers_tokenize(flux_dirs: dict[str, Path]) -> None:
    pipe = FluxPipeline.from_pretrained(flux_dirs["flux-dev"], transformer=None, vae=None)
    clip = pipe.tokenizer("a red fox", padding="max_length", max_length=77)
    assert len(clip.input_ids) == 77 and clip.input_ids[0] == pipe.tokenizer.bos_token_id
    t5 = pipe.tokenizer_2("a red fox").input_ids
    assert t5[-1] == pipe.tokenizer_2.eos_token_id and pipe.tokenizer_2.unk_token_id not in t5


def test_hub_mode_refuses_an_unpinned_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RYLA_ALLOW_UNPINNED", raising=False)
    monkeypatch.setitem(CHECKPOINTS, "flux-dev", dataclasses.replace(CHECKPOINTS["flux-dev"], revision="main"))
    with pytest.raises(ValueError, match="not a pinned 40-hex commit"):
        resolve("flux-dev", "hub", tmp_path)
