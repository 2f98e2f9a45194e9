"""FLUX's text encoders as exported: the ONNX graphs give what FluxPipeline's own encode_prompt computes from the
same tokenization (the pipeline's CLIP pooling and T5 states, not only the adapters' modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from diffusers import FluxPipeline


def session(onnx_dir: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_dir / name / "model.onnx"), providers=["CPUExecutionProvider"])


def test_text_encoders_give_what_the_pipeline_computes(flux_onnx_dir: Path, tiny_checkpoint_dirs: dict[str, Path]):
    pipe = FluxPipeline.from_pretrained(tiny_checkpoint_dirs["flux-dev"], transformer=None, vae=None)
    prompts = ["a red fox on a snowy cliff", "a lighthouse at dawn"]
    with torch.no_grad():
        prompt_embeds, pooled, _ = pipe.encode_prompt(prompts, prompt_2=None, max_sequence_length=512)
    # The tokenization FluxPipeline does: CLIP padded to 77, T5 to max_sequence_length.
    clip_ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    t5_ids = pipe.tokenizer_2(prompts, padding="max_length", max_length=512, truncation=True, return_tensors="np")
    got_pooled = session(flux_onnx_dir, "flux_text_encoder").run(None, {"input_ids": clip_ids.input_ids})[0]
    got_embeds = session(flux_onnx_dir, "flux_text_encoder_2").run(None, {"input_ids": t5_ids.input_ids})[0]
    assert np.abs(got_pooled - pooled.numpy()).max() <= 1e-4
    assert np.abs(got_embeds - prompt_embeds.numpy()).max() <= 1e-4
