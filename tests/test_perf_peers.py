"""The peer the GPU benchmark runs beside ours (perf/peers.py), wired onto a tiny FLUX pipeline with the real
cache-dit: its DBCache skips the steps it should and changes the image; released, the pipeline gives the plain
image again, bit for bit. (FP8 through torchao and compile need the GPU: they run in the benchmark there.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import FluxPipeline

from checkpoints.tiny import build_tiny
from perf.peers import cache_dit_peer, release_cache


def test_cache_dit_dbcache_runs_on_our_pipeline_and_comes_off(tmp_path: Path) -> None:
    import cache_dit

    folder = build_tiny("flux-dev", tmp_path / "tiny")
    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    def image() -> np.ndarray:
        out = pipe("a fox", width=128, height=128, num_inference_steps=8, max_sequence_length=64,
                   generator=torch.Generator().manual_seed(1), output_type="np")  # fmt: skip
        return out.images[0]

    plain = image()
    # The tiny transformer has 2 double blocks: one computed, a threshold every step passes, 2 warm-up steps.
    options = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=10.0, max_warmup_steps=2)
    fresh = FluxPipeline.from_pretrained(folder).transformer
    cache_dit_peer(pipe, fresh, cache=True, quantize=False, compile=False, cache_options=options, log=lambda _: None)
    cached = image()
    (stats,) = [s for s in cache_dit.summary(pipe) if s.cached_steps]
    assert stats.cached_steps == list(range(2, 8))  # every step after the warm-up reused the cache
    assert np.isfinite(cached).all() and not np.array_equal(cached, plain)
    release_cache(pipe)
    assert np.array_equal(image(), plain)
