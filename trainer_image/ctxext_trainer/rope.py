"""RoPE theta of a loaded model: set it the way transformers 5.x honours, and keep RoPE in fp32.

In transformers 5.x the base lives in ``config.rope_parameters["rope_theta"]``; the rotary module
reads it once, in its constructor. So a stage's theta takes effect only if we (1) write
``config.rope_parameters`` and (2) rebuild ``model.model.rotary_emb`` from the updated config.
Writing ``config.rope_theta`` after construction is silently ignored. Only the theta changes: the
base model's ``rope_type`` and its parameters (a Llama-3.1/3.2 ``llama3`` frequency scaling, say)
are kept, and types theta scaling cannot re-base are refused
(:func:`ctxext.theta.stage_rope_parameters`).

DeepSpeed's bf16 mode casts every floating buffer of the module to bf16, ``inv_freq`` included;
bf16 has an 8-bit mantissa, so ``position · inv_freq`` would be wrong beyond position 256.
:func:`keep_rope_fp32` rebuilds the rotary module after ``deepspeed.initialize`` to restore fp32.

Worked example (head_dim 4, θ = 10000): inv_freq = [θ^0, θ^(−2/4)] = [1.0, 0.01]; at position 3
the angles are [3.0, 0.03], so cos = [cos 3, cos 0.03, cos 3, cos 0.03] (HF repeats the halves).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ctxext.theta import stage_rope_parameters


def rope_tables(theta: float, head_dim: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference cos/sin of shape ``positions.shape + (head_dim,)`` computed in float64.

    >>> cos, sin = rope_tables(10000.0, 4, torch.tensor([3]))
    >>> [round(v, 4) for v in cos[0].tolist()]
    [-0.99, 0.9996, -0.99, 0.9996]
    """
    inv_freq = torch.tensor([theta ** (-(2 * i) / head_dim) for i in range(head_dim // 2)], dtype=torch.float64)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def head_dim_of(config: Any) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def apply_stage_rope(config: Any, theta: float, seq_len: int) -> None:
    """Write the stage's theta into ``config.rope_parameters`` (keeping the base's RoPE type and its
    parameters) and make room for ``seq_len`` positions. Idempotent: a second call with the same
    theta changes nothing. Raises :class:`ctxext.theta.RopeTypeError` for an unscalable RoPE type."""
    if not (math.isfinite(theta) and theta > 0):
        raise ValueError(f"rope theta must be positive and finite, got {theta}")
    base_max = int(getattr(config, "max_position_embeddings", 0) or 0) or None
    config.rope_parameters = stage_rope_parameters(getattr(config, "rope_parameters", None), theta,
                                                   base_max_position_embeddings=base_max)
    config.max_position_embeddings = max(base_max or 0, seq_len)


def rotary_module(model: Any) -> Any:
    """The model's shared rotary embedding module (``model.model.rotary_emb`` for Llama)."""
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__} has no rotary_emb; only Llama-family models are supported")
    return rotary


def rebuild_rotary_embedding(model: Any) -> Any:
    """Construct a fresh rotary module of the model's own class from ``model.config``; fp32 buffers."""
    base = getattr(model, "model", model)
    old = rotary_module(model)
    device = old.inv_freq.device
    new = type(old)(config=model.config).to(device=device)
    new.inv_freq = new.inv_freq.float()
    new.original_inv_freq = new.original_inv_freq.float()
    base.rotary_emb = new
    return new


def set_rope_theta(model: Any, theta: float, seq_len: int) -> None:
    """Apply a stage's RoPE theta to a loaded model (config + rebuilt rotary embedding)."""
    apply_stage_rope(model.config, theta, seq_len)
    rebuild_rotary_embedding(model)


def keep_rope_fp32(model: Any) -> None:
    """Restore fp32 inv_freq after a bf16 cast (DeepSpeed bf16 casts buffers too)."""
    if rotary_module(model).inv_freq.dtype != torch.float32:
        rebuild_rotary_embedding(model)


def model_rope_theta(model: Any) -> float:
    return float(model.config.rope_parameters["rope_theta"])
