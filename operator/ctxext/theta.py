"""RoPE theta rules: the one implementation of the theta math, shared by operator and trainer.

Rotary position embeddings rotate each pair ``i`` of a head's ``d`` dimensions by the angle
``p · θ^(−2i/d)`` at position ``p``. Raising the base ``θ`` slows every rotation, so positions
beyond the original context ``L0`` produce angles the model has already seen. Three rules choose
``θ`` for a stage of length ``L``:

``scaling-law`` (Liu et al. 2023, "Scaling Laws of RoPE-based Extrapolation", continuous bound)::

    θ(L) = θ0 ^ ( ln(L / 2π) / ln(L0 / 2π) )

    Worked example, Llama-3 (θ0 = 500000, L0 = 8192) at L = 1,048,576:
        ln(1048576 / 2π) = 12.0250,  ln(8192 / 2π) = 7.1730,  exponent = 1.67643
        θ = 500000 ^ 1.67643 = 3,580,165,449   ← rope_theta of Gradient's released 1048K models

``ntk`` (NTK-aware scaling)::

    θ = θ0 · α ^ (d / (d − 2)),   α = ntkAlpha, default L / L0

    Worked example, Gradient's 65K stage (θ0 = 500000, d = 128, α = 29):
        θ = 500000 · 29 ^ (128 / 126) = 500000 · 30.592 = 15,296,098

``fixed``: the stage's explicit ``ropeTheta``.

Every rule returns a float; the result must be finite and at most :data:`MAX_ROPE_THETA`.
No torch here: the operator image imports this module without it.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

#: Largest theta we accept. fp32 inverse frequencies θ^(−2i/d) stay normal numbers far beyond
#: this, but a theta this large already flattens every rotation below one turn per 10^15 tokens.
MAX_ROPE_THETA = 1e15


class ThetaRule(StrEnum):
    """How a stage's RoPE base frequency is derived from its sequence length."""

    SCALING_LAW = "scaling-law"
    NTK = "ntk"
    FIXED = "fixed"


class ThetaError(ValueError):
    """A theta that cannot be computed or is out of range; the message says why."""


def _check(theta: float, what: str) -> float:
    if not math.isfinite(theta) or theta <= 0:
        raise ThetaError(f"{what} gives ropeTheta={theta!r}; it must be a positive finite number")
    if theta > MAX_ROPE_THETA:
        raise ThetaError(f"{what} gives ropeTheta={theta:.6g}, above the maximum {MAX_ROPE_THETA:.0e}")
    return theta


def scaling_law_theta(base_theta: float, original_length: int, seq_len: int) -> float:
    """θ(L) = θ0 ^ (ln(L/2π) / ln(L0/2π)).

    >>> round(scaling_law_theta(500000, 8192, 1048576))
    3580165449
    >>> scaling_law_theta(500000, 8192, 8192)
    500000.0
    """
    if base_theta <= 1:
        raise ThetaError(f"scaling-law needs a base ropeTheta > 1, got {base_theta}")
    if original_length <= 2 * math.pi:
        raise ThetaError(f"scaling-law needs originalContextLength > 2π, got {original_length}")
    if seq_len <= 2 * math.pi:
        raise ThetaError(f"scaling-law needs seqLen > 2π, got {seq_len}")
    exponent = math.log(seq_len / (2 * math.pi)) / math.log(original_length / (2 * math.pi))
    try:
        theta = base_theta**exponent
    except OverflowError:
        theta = math.inf
    return _check(theta, f"scaling-law at seqLen={seq_len}")


def ntk_theta(base_theta: float, head_dim: int, alpha: float) -> float:
    """θ = θ0 · α^(d/(d−2)).

    >>> round(ntk_theta(500000, 128, 29))
    15296098
    """
    if head_dim <= 2 or head_dim % 2:
        raise ThetaError(f"ntk needs an even headDim > 2, got {head_dim}")
    if not alpha >= 1:
        raise ThetaError(f"ntkAlpha must be >= 1, got {alpha}")
    try:
        theta = base_theta * alpha ** (head_dim / (head_dim - 2))
    except OverflowError:
        theta = math.inf
    return _check(theta, f"ntk with alpha={alpha}")


def stage_theta(
    rule: ThetaRule | str,
    *,
    base_theta: float,
    original_length: int,
    seq_len: int,
    head_dim: int,
    override: float | None = None,
    ntk_alpha: float | None = None,
) -> float:
    """The RoPE theta of one stage: an explicit ``override`` wins, otherwise ``rule`` decides.

    >>> round(stage_theta("ntk", base_theta=5e5, original_length=8192, seq_len=65536, head_dim=128))
    4134231
    """
    if override is not None:
        return _check(float(override), "the stage's ropeTheta")
    rule = ThetaRule(rule)
    if rule is ThetaRule.SCALING_LAW:
        return scaling_law_theta(base_theta, original_length, seq_len)
    if rule is ThetaRule.NTK:
        alpha = ntk_alpha if ntk_alpha is not None else seq_len / original_length
        return ntk_theta(base_theta, head_dim, alpha)
    raise ThetaError(f"thetaRule fixed needs an explicit ropeTheta for the stage at seqLen={seq_len}")


def rope_parameters(theta: float) -> dict[str, Any]:
    """The Hugging Face (transformers 5.x) ``config.rope_parameters`` for a theta-scaled model.

    Theta scaling keeps the plain rotary embedding and changes only its base, so ``rope_type`` is
    ``default``. Writing ``config.rope_theta`` instead is silently ignored by transformers 5.x.

    >>> rope_parameters(3580165449.0)
    {'rope_type': 'default', 'rope_theta': 3580165449.0}
    """
    return {"rope_type": "default", "rope_theta": float(_check(float(theta), "rope_parameters"))}


def inverse_frequencies(theta: float, head_dim: int) -> list[float]:
    """inv_freq[i] = θ^(−2i/d) for i in 0..d/2−1, in float64 (the reference for parity tests).

    >>> inverse_frequencies(10000.0, 4)
    [1.0, 0.01]
    """
    return [theta ** (-(2 * i) / head_dim) for i in range(head_dim // 2)]
