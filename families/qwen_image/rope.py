"""Qwen-Image's rotary position embedding in real arithmetic, so its transformer exports to ONNX.

diffusers computes the rotary tables as complex numbers (`QwenEmbedRope`, `torch.polar`) from a Python list
`img_shapes` and applies them with `view_as_complex`. ONNX carries neither complex tensors nor Python lists, so the
serving side computes the tables itself (`QwenRope`, cos/sin pairs, from the `img_shapes` the pipeline builds) and
the transformer takes them as two tensor inputs:

    image_rope (image_tokens, rope_dim/2, 2), text_rope (text_tokens, rope_dim/2, 2): [..., 0] cos, [..., 1] sin.

`use_given_tensors` rewires a stock `QwenImageTransformer2DModel` to run on such tables: its `pos_embed` hands
back the given tables and every attention applies them with cos/sin (`QwenRealRopeAttnProcessor`). The stock forward
and blocks run unchanged otherwise, so the export computes what `model(..., img_shapes=...)` computes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
from torch.overrides import TorchFunctionMode

ROPE_THETA = 10000  # diffusers builds QwenEmbedRope / QwenEmbedLayer3DRope with theta=10000, not from the config
TABLE_POSITIONS = 4096  # diffusers' tables hold positions -4096..4095; beyond them its text table silently shortens

FHW = tuple[int, int, int]


def _axis_inv_freqs(axes_dims: tuple[int, ...], theta: int) -> list[torch.Tensor]:
    # The exact float32 expression of QwenEmbedRope.rope_params: the same angles, so cos/sin agree to an ulp.
    return [1.0 / torch.pow(theta, torch.arange(0, d, 2).to(torch.float32).div(d)) for d in axes_dims]


def _sample_fhws(img_shapes: Any) -> tuple[FHW, ...]:
    """The images of one sample, picked the way diffusers' pos_embed does: a list is a batch, whose first entry
    counts (the pipelines repeat one entry per batch row); an entry is one (frame, height, width) or a list of them
    (edit pipelines: the target image, then each condition image)."""
    fhw = img_shapes[0] if isinstance(img_shapes, list) else img_shapes
    if not isinstance(fhw, list):
        fhw = [fhw]
    return tuple((int(f), int(h), int(w)) for f, h, w in fhw)


@functools.lru_cache(maxsize=8)  # a few live request shapes; each table pair is a few MB at 1328²
def _tables(
    axes_dims: tuple[int, ...],
    theta: int,
    layer3d: bool,
    fhws: tuple[FHW, ...],
    text_tokens: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    # Computed on the CPU like diffusers' own tables (the same float32 angles), then moved once per device and
    # cached: a request reuses the tables of its resolution and text length at every denoising step.
    inv_freqs = _axis_inv_freqs(axes_dims, theta)
    last = len(fhws) - 1
    image_angles = []
    max_index = 0
    for idx, (frame, height, width) in enumerate(fhws):
        if layer3d and idx == last:
            if frame != 1:
                raise ValueError(f"the condition image of a Layer3D rope has one frame, got {fhws[idx]}")
            frames = torch.tensor([-1])  # QwenEmbedLayer3DRope gives the condition image frame index -1
        else:
            frames = torch.arange(idx, idx + frame)
        # scale_rope=True: positions centred on zero, -(n - n//2) .. n//2 - 1
        rows = torch.arange(-(height - height // 2), height // 2)
        cols = torch.arange(-(width - width // 2), width // 2)
        parts = [
            torch.outer(frames, inv_freqs[0]).view(frame, 1, 1, -1).expand(frame, height, width, -1),
            torch.outer(rows, inv_freqs[1]).view(1, height, 1, -1).expand(frame, height, width, -1),
            torch.outer(cols, inv_freqs[2]).view(1, 1, width, -1).expand(frame, height, width, -1),
        ]
        image_angles.append(torch.cat(parts, dim=-1).reshape(frame * height * width, -1))
        max_index = max(max_index, height // 2, width // 2)
    if layer3d:
        max_index = max(max_index, last)
    if max_index + text_tokens > TABLE_POSITIONS:
        raise ValueError(f"positions past diffusers' {TABLE_POSITIONS}-entry rope table: {fhws}, {text_tokens} tokens")
    # Text tokens sit on the diagonal after the largest image index, at the same position on all three axes.
    positions = torch.arange(max_index, max_index + text_tokens)
    text_angles = torch.cat([torch.outer(positions, f) for f in inv_freqs], dim=1)

    def cos_sin(angles: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).contiguous().to(device)

    return cos_sin(torch.cat(image_angles, dim=0)), cos_sin(text_angles)


class QwenRope:
    """The rotary tables of a Qwen-Image transformer for one request, as cos/sin pairs.

    Equal to the complex tables of the model's own `pos_embed` (cos = real part, sin = imaginary part). Cheap: the
    tables are cached per (img_shapes, text length, device), so calling it every step costs a dictionary lookup.
    """

    def __init__(self, axes_dims_rope: Sequence[int], use_layer3d_rope: bool = False, theta: int = ROPE_THETA) -> None:
        if len(axes_dims_rope) != 3 or any(d % 2 for d in axes_dims_rope):
            raise ValueError(f"axes_dims_rope must be three even sizes, got {axes_dims_rope}")
        self.axes_dims = tuple(int(d) for d in axes_dims_rope)
        self.layer3d = bool(use_layer3d_rope)
        self.theta = theta

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> QwenRope:
        """From a `QwenImageTransformer2DModel` config (the model's `.config` or its config.json as a dict)."""
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        return cls(get("axes_dims_rope", (16, 56, 56)), bool(get("use_layer3d_rope", False)))

    @property
    def rope_dim(self) -> int:
        """The attention head dim the tables rotate: the tables are (tokens, rope_dim/2, 2)."""
        return sum(self.axes_dims)

    def __call__(
        self, img_shapes: Any, text_tokens: int | torch.Tensor, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_rope (image_tokens, rope_dim/2, 2), text_rope (text_tokens, rope_dim/2, 2)) for `img_shapes` as the
        pipeline passes it to the transformer, and the padded text length (encoder_hidden_states.shape[1]).

        The returned tensors are shared by later calls with the same arguments: read them, don't write them."""
        device = torch.device("cpu" if device is None else device)
        return _tables(self.axes_dims, self.theta, self.layer3d, _sample_fhws(img_shapes), int(text_tokens), device)


def modulate_index_of(img_shapes: Sequence[Sequence[FHW]], device: torch.device | str | None = None) -> torch.Tensor:
    """What the stock forward builds for `zero_cond_t` (Qwen-Image-Edit-2511): per batch row, 0 for the tokens of
    the first (target) image and 1 for every condition image's tokens; (batch, image_tokens).

    INT64 (the registry's dtype; the stock builds int32, and only compares it with 0)."""
    rows = []
    for sample in img_shapes:
        first = math.prod(sample[0])
        total = sum(math.prod(s) for s in sample)
        rows.append((torch.arange(total, device=device) >= first).to(torch.int64))
    return torch.stack(rows)


def apply_rope_real(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """`apply_rotary_emb_qwen(x, freqs, use_real=False)` with freqs as cos/sin pairs.

    x: (batch, tokens, heads, head_dim); table: (tokens, head_dim/2, 2). Consecutive channel pairs (2i, 2i+1) are
    one complex number, exactly like view_as_complex on x.reshape(..., -1, 2)."""
    real, imag = x.float().reshape(*x.shape[:-1], -1, 2).unbind(-1)
    cos, sin = table.unsqueeze(1).unbind(-1)  # (tokens, 1, head_dim/2): broadcast over batch and heads
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(3).type_as(x)


class QwenRealRopeAttnProcessor(QwenDoubleStreamAttnProcessor2_0):
    """QwenDoubleStreamAttnProcessor2_0 (diffusers 0.42.1) with the rotary embedding applied from cos/sin tables.

    The stock `__call__`'s steps in the same order, except the rotary application: the stock calls the module-level
    `apply_rotary_emb_qwen` (complex), which cannot be redirected without patching diffusers globally.
    `image_rotary_emb` is (image_rope, text_rope)."""

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if encoder_hidden_states is None:
            raise ValueError("QwenRealRopeAttnProcessor requires encoder_hidden_states (text stream)")
        if attention_mask is not None:
            raise ValueError("QwenRealRopeAttnProcessor builds the joint mask from encoder_hidden_states_mask")

        if encoder_hidden_states_mask is not None:
            seq_img = hidden_states.shape[1]
            image_mask = torch.ones((hidden_states.shape[0], seq_img), dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)
            attention_mask = attention_mask[:, None, None, :]

        seq_txt = encoder_hidden_states.shape[1]
        head_dim = attn.inner_dim // attn.heads
        img_query = attn.to_q(hidden_states).unflatten(-1, (-1, head_dim))
        img_key = attn.to_k(hidden_states).unflatten(-1, (-1, head_dim))
        img_value = attn.to_v(hidden_states).unflatten(-1, (-1, head_dim))
        txt_query = attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
        txt_key = attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
        txt_value = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))

        if attn.norm_q is not None:
            img_query = attn.norm_q(img_query)
        if attn.norm_k is not None:
            img_key = attn.norm_k(img_key)
        if attn.norm_added_q is not None:
            txt_query = attn.norm_added_q(txt_query)
        if attn.norm_added_k is not None:
            txt_key = attn.norm_added_k(txt_key)

        if image_rotary_emb is not None:
            image_rope, text_rope = image_rotary_emb
            img_query = apply_rope_real(img_query, image_rope)
            img_key = apply_rope_real(img_key, image_rope)
            txt_query = apply_rope_real(txt_query, text_rope)
            txt_key = apply_rope_real(txt_key, text_rope)

        # Joint attention, text first.
        joint_query = torch.cat([txt_query, img_query], dim=1)
        joint_key = torch.cat([txt_key, img_key], dim=1)
        joint_value = torch.cat([txt_value, img_value], dim=1)
        joint_hidden_states = dispatch_attention_fn(
            joint_query,
            joint_key,
            joint_value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        joint_hidden_states = joint_hidden_states.flatten(2, 3).to(joint_query.dtype)

        txt_attn_output = joint_hidden_states[:, :seq_txt, :]
        img_attn_output = joint_hidden_states[:, seq_txt:, :]
        img_attn_output = attn.to_out[0](img_attn_output.contiguous())
        if len(attn.to_out) > 1:
            img_attn_output = attn.to_out[1](img_attn_output)  # dropout
        txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
        return img_attn_output, txt_attn_output


class GivenTensors(torch.nn.Module):
    """Sits at `model.pos_embed` in place of diffusers' complex rope and hands the stock forward, for the current
    call (`given`), tensors it would otherwise derive in ways torch.export fixes to the traced shape:

    - the rotary tables (`pos_embed`'s output; the stock derives them from the Python `img_shapes`);
    - each block's `encoder_hidden_states_mask` (the stock normalises it with `compute_text_seq_len_from_mask`,
      whose `torch.as_tensor(text_seq_len)` specialises text_tokens; its other results feed only the rope);
    - each block's `modulate_index` for zero_cond_t models (the stock builds it from `img_shapes`).

    Holds them for one call only: one call at a time per model (as in export and in a Triton model instance)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self.mask: torch.Tensor | None = None
        self.modulate_index: torch.Tensor | None = None

    def forward(self, video_fhw: Any, max_txt_seq_len: Any = None, device: Any = None) -> tuple[torch.Tensor, ...]:
        if self.tables is None:
            raise RuntimeError("call the model inside model.pos_embed.given(...): img_shapes are not used")
        return self.tables

    @contextmanager
    def given(
        self,
        image_rope: torch.Tensor,
        text_rope: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor | None,
        modulate_index: torch.Tensor | None = None,
    ) -> Iterator[None]:
        mask = None if encoder_hidden_states_mask is None else encoder_hidden_states_mask.to(torch.bool)
        self.tables, self.mask, self.modulate_index = (image_rope, text_rope), mask, modulate_index
        try:
            yield
        finally:
            # Cleared, so torch.export finds the module attributes as it found them (no tensor left assigned).
            self.tables, self.mask, self.modulate_index = None, None, None

    def block_inputs(self, _: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of every transformer block: what the stock forward would have passed it."""
        if self.tables is None:
            raise RuntimeError("call the model inside model.pos_embed.given(...)")
        kwargs = {**kwargs, "encoder_hidden_states_mask": self.mask}
        if kwargs.get("modulate_index") is not None:  # zero_cond_t: the stock's index from img_shapes is replaced
            if self.modulate_index is None:
                raise RuntimeError("a zero_cond_t model needs modulate_index in model.pos_embed.given(...)")
            kwargs["modulate_index"] = self.modulate_index
        return args, kwargs


def use_given_tensors(model: torch.nn.Module) -> GivenTensors:
    """Rewire a stock QwenImageTransformer2DModel, in place, to take its rotary tables, text mask and (zero_cond_t)
    modulate_index as tensors: call it with `img_shapes=[]` and `encoder_hidden_states_mask=None` inside
    `model.pos_embed.given(...)` (QwenTransformer in adapters.py does). No parameter changes: state_dict names stay.
    Every other step of the stock forward (timestep doubling and temb halving for zero_cond_t, the blocks, the
    modulation) runs unchanged."""
    if isinstance(model.pos_embed, GivenTensors):
        return model.pos_embed
    given = GivenTensors()
    model.pos_embed = given
    for block in model.transformer_blocks:
        block.attn.set_processor(QwenRealRopeAttnProcessor())
        block.register_forward_pre_hook(given.block_inputs, with_kwargs=True)
    return given


class _HalvesByNarrow(TorchFunctionMode):
    """`chunk(2, dim=0)` as two `narrow`s.

    zero_cond_t's stock code doubles the batch (timestep, 0) and takes the first half back with `chunk(2, dim=0)`.
    torch's chunk decomposition guards on its piece count, (3*batch - 1) // batch == 2: true for every batch >= 1,
    but beyond torch.export's symbolic reasoning, so it would fix batch to the traced size. Two narrows of
    (n + 1) // 2 and n - (n + 1) // 2 rows are chunk's own pieces for any n >= 2 (a doubled batch always is)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.chunk, torch.Tensor.chunk):
            call = {**dict(zip(("input", "chunks", "dim"), args, strict=False)), **kwargs}
            x, chunks, dim = call["input"], call["chunks"], call.get("dim", 0)
            if chunks == 2 and dim == 0:
                n = x.shape[0]
                first = (n + 1) // 2
                return x.narrow(0, 0, first), x.narrow(0, first, n - first)
        return func(*args, **kwargs)


def halves_for_export(enabled: bool = True) -> _HalvesByNarrow | nullcontext:
    """While torch.export traces a zero_cond_t model: batch halving it can keep dynamic (`_HalvesByNarrow`).
    Outside export, nothing: eager runs the stock chunk untouched and pays no Python dispatch per op."""
    return _HalvesByNarrow() if enabled and torch.compiler.is_exporting() else nullcontext()
