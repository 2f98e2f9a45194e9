"""The peers a GPU benchmark runs beside ours, on the same pipeline object and the same weights.

cache-dit (https://github.com/vipshop/cache-dit, PyPI `cache-dit`): in its best setting that keeps the image, FP8
per-row linears through torchao and torch.compile of the repeated blocks, as its own example CLI sets them up
(enable_cache, then quantize, then compile); with `cache`, its DBCache too, which skips block computations on steps
whose residual changed little: faster, and a different image (rows of it are marked lossy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

CACHE_DIT_VARIANTS = {"cache_dit": False, "cache_dit_dbcache_lossy": True}  # variant -> DBCache on


def cache_dit_peer(
    pipe: Any,  # a diffusers pipeline with a `transformer`
    transformer: torch.nn.Module,
    *,
    cache: bool,
    quantize: bool = True,
    compile: bool = True,
    cache_options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Set `transformer` (fresh BF16 weights: FP8 cannot be undone in place) into `pipe` as cache-dit runs it.
    `quantize` needs torchao and a GPU; `compile=False` and `quantize=False` leave only the cache (a CPU check).
    `cache_options`: DBCacheConfig fields over its defaults (a tiny model has fewer blocks than they compute)."""
    import cache_dit

    pipe.transformer = transformer
    if cache:
        cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(**(cache_options or {})))
        log(f"cache-dit {cache_dit.__version__}: DBCache on")
    if quantize:
        pipe.transformer = cache_dit.quantize(
            pipe.transformer, quantize_config=cache_dit.QuantizeConfig(quant_type="float8_per_row")
        )
        log("cache-dit: float8_per_row linears (torchao)")
    if compile:
        cache_dit.set_compile_configs()
        pipe.transformer.compile_repeated_blocks()
        log("cache-dit: repeated blocks compiled with its compile settings")


def release_cache(pipe: Any) -> None:
    """Take cache-dit's hooks off `pipe` (before the next variant), if it has any."""
    import cache_dit

    cache_dit.disable_cache(pipe)
