"""ZImagePipeline's call: its guidance knob is `guidance_scale` w in `pos + w * (pos - neg)`, so the route's `cfg`
(true CFG's scale, api.md) enters as w = cfg - 1 (no guidance at cfg <= 1, as for the other distilled models), and
a prompt is checked against the text encoder's limit with the chat template the pipeline wraps it in (the
pipeline would silently truncate it at max_sequence_length)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def templated_tokens(tokenizer: Any, text: str) -> int:
    """How many tokens ZImagePipeline feeds its text encoder for `text`: the user turn in the chat template."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    return len(tokenizer(rendered, truncation=False).input_ids)


def guidance_scale(cfg: float) -> float:
    """The route's cfg as ZImagePipeline's guidance_scale: the same true-CFG combination, 0 (off) at cfg <= 1."""
    return cfg - 1.0 if cfg > 1.0 else 0.0


def z_image_call(pipe: Any, kwargs: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    from model_repository.pipelines import InvalidRequest

    cfg = kwargs.pop("true_cfg_scale")
    negative = kwargs.pop("negative_prompt", None)
    kwargs["guidance_scale"] = guidance_scale(cfg)
    if kwargs["guidance_scale"] > 0:
        kwargs["negative_prompt"] = negative or ""
    limit = kwargs["max_sequence_length"]
    for field, text in (("prompt", kwargs["prompt"]), ("negative_prompt", kwargs.get("negative_prompt"))):
        count = templated_tokens(pipe.tokenizer, text) if text else 0
        if count > limit:
            raise InvalidRequest(
                field, f"{field} is {count} tokens in the chat template; the text encoder takes at most {limit}"
            )
    return kwargs


# Pipeline class -> how its call's keyword arguments are adapted (model_repository/pipelines.py applies it).
CALL_HOOKS: dict[str, Callable[[Any, dict[str, Any], torch.Generator], dict[str, Any]]] = {
    "ZImagePipeline": z_image_call,
}
