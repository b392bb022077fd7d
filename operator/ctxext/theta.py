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
from collections.abc import Mapping
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


#: RoPE types theta scaling can re-base: the base frequency is the only thing it changes, and every
#: other parameter keeps its meaning (linear's interpolation factor, llama3's factor and wavelength
#: bands, YaRN's ramp and attention factor, all relative to the pre-training length).
SCALABLE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
#: Types that would silently undo or distort a stage's theta, and why.
UNSCALABLE_ROPE_TYPES = {
    "dynamic": "dynamic NTK recomputes the base from the current sequence length at run time, which "
               "overrides the stage's theta beyond max_position_embeddings",
    "longrope": "LongRoPE's per-dimension factors are fitted for one target length and switch at the "
                "original length; a new base invalidates them",
    "proportional": "proportional RoPE is a per-layer scheme of another model family",
}
#: Parameters that default to max_position_embeddings when absent; theta scaling raises that value,
#: so they are pinned to the base model's value first.
_LENGTH_PINNED_TYPES = ("llama3", "yarn")


class RopeTypeError(ThetaError):
    """The base model's RoPE configuration cannot be theta-scaled; the message says why."""


def rope_type_of(params: Mapping[str, Any] | None) -> str:
    """The ``rope_type`` of a (possibly legacy ``rope_scaling``-style) RoPE parameter dict.

    >>> rope_type_of(None), rope_type_of({"type": "linear", "factor": 2.0}), rope_type_of({"rope_type": "llama3"})
    ('default', 'linear', 'llama3')
    """
    if not params:
        return "default"
    return str(params.get("rope_type") or params.get("type") or "default")


def check_rope_scalable(params: Mapping[str, Any] | None) -> str:
    """The rope type of ``params`` if theta scaling supports it; :class:`RopeTypeError` otherwise.

    >>> check_rope_scalable({"rope_type": "llama3", "factor": 8.0})
    'llama3'
    >>> try:
    ...     check_rope_scalable({"rope_type": "dynamic", "factor": 2.0})
    ... except RopeTypeError as exc:
    ...     print(str(exc)[:59])
    the base model's RoPE type 'dynamic' cannot be theta-scaled
    """
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise RopeTypeError(f"per-layer-type RoPE parameters ({', '.join(sorted(params))}) cannot be "
                            "theta-scaled; only one global rope_parameters dict is supported")
    kind = rope_type_of(params)
    if kind in SCALABLE_ROPE_TYPES:
        return kind
    why = UNSCALABLE_ROPE_TYPES.get(kind, f"it is not one of {', '.join(SCALABLE_ROPE_TYPES)}")
    raise RopeTypeError(f"the base model's RoPE type {kind!r} cannot be theta-scaled: {why}")


def stage_rope_parameters(base: Mapping[str, Any] | None, theta: float, *,
                          base_max_position_embeddings: int | None = None) -> dict[str, Any]:
    """The Hugging Face (transformers 5.x) ``config.rope_parameters`` of a stage at ``theta``.

    The base model's RoPE type and its parameters are kept; only ``rope_theta`` changes. Where a
    parameter would default to ``max_position_embeddings`` (which each stage raises to its length),
    it is pinned to the base model's value: llama3 / YaRN's ``original_max_position_embeddings``, and
    a YaRN ``factor`` of None (= max / original). Writing ``config.rope_theta`` instead is silently
    ignored by transformers 5.x. Raises :class:`RopeTypeError` for types theta scaling cannot re-base.

    Worked example, a Llama-3.2 base (``rope_type: llama3``, factor 32 over an 8K pre-training
    length, θ0 = 500000) at θ = 3.58e9: factor, both frequency factors and the 8192 stay, so the
    llama3 wavelength bands are still cut at 8192 / 4 and 8192 / 1 tokens, now of the slower base.

    >>> llama32 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
    ...            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    >>> stage_rope_parameters(llama32, 3580165449.0) == {**llama32, "rope_theta": 3580165449.0}
    True
    >>> stage_rope_parameters(None, 1e6)
    {'rope_type': 'default', 'rope_theta': 1000000.0}
    >>> no_length = {k: v for k, v in llama32.items() if k != "original_max_position_embeddings"}
    >>> stage_rope_parameters(no_length, 1e7, base_max_position_embeddings=8192)["original_max_position_embeddings"]
    8192
    """
    kind = check_rope_scalable(base)
    out: dict[str, Any] = {k: v for k, v in (base or {}).items() if k != "type"}
    out["rope_type"] = kind
    out["rope_theta"] = float(_check(float(theta), "rope_parameters"))
    if kind in _LENGTH_PINNED_TYPES and out.get("original_max_position_embeddings") is None:
        if base_max_position_embeddings is None:
            raise RopeTypeError(f"RoPE type {kind!r} needs original_max_position_embeddings (or the base "
                                "model's max_position_embeddings) to be theta-scaled")
        out["original_max_position_embeddings"] = int(base_max_position_embeddings)
    if kind == "yarn" and out.get("factor") is None:
        if base_max_position_embeddings is None:
            raise RopeTypeError("YaRN without a factor needs the base model's max_position_embeddings")
        out["factor"] = base_max_position_embeddings / out["original_max_position_embeddings"]
    return out


def rope_parameters(theta: float) -> dict[str, Any]:
    """``config.rope_parameters`` of a plain (``default``) RoPE at ``theta``.

    >>> rope_parameters(3580165449.0)
    {'rope_type': 'default', 'rope_theta': 3580165449.0}
    """
    return stage_rope_parameters(None, theta)


def inverse_frequencies(theta: float, head_dim: int) -> list[float]:
    """inv_freq[i] = θ^(−2i/d) for i in 0..d/2−1, in float64 (the reference for parity tests).

    >>> inverse_frequencies(10000.0, 4)
    [1.0, 0.01]
    """
    return [theta ** (-(2 * i) / head_dim) for i in range(head_dim // 2)]
